"""Importing this module loads the scipy and scikit-image code the common ops call.

The ops reach scipy and scikit-image through lazily loaded submodules (tasks/__init__.py)
so that planning does not wait for them. Whoever runs ops imports this ahead of time
instead: a worker before its first task (engine/core/worker_env.py), the driver, which
computes Otsu's threshold and the label merge itself, in the background when a run
starts (engine/plan/kinds.py, engine/core/preload.py). `import skimage.filters` alone
loads nothing (2 ms): scikit-image loads a function's module when it is first asked for.
"""

import scipy.ndimage  # noqa: F401
import scipy.sparse.csgraph  # noqa: F401
from skimage.filters import threshold_otsu  # noqa: F401
