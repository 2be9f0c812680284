"""Importing this module loads the scipy and scikit-image code the common ops call.

The ops reach scipy and scikit-image through lazily loaded submodules (tasks/__init__.py)
so that planning does not wait for them. Whoever runs ops imports this ahead of time
instead: a worker before its first task (engine/core/worker_env.py), and a run on threads
of the command for an op that names it (`OpSpec.loads`, the default; engine/plan/kinds.py,
engine/core/preload.py). gaussian, Otsu and label with their compiled kernels name
nothing: they need neither package. `import skimage.filters` alone loads nothing (2 ms):
scikit-image loads a function's module when it is first asked for.

Not scipy.sparse.csgraph (and the scipy.sparse.linalg and scipy.linalg it loads: 0.12 to
0.15 s): only the driver's label merge uses it, and a run that has one preloads it for
that stage (engine/plan/kinds.py); a run of one chunk per label has none.
"""

import scipy.ndimage  # noqa: F401
from skimage.filters import threshold_otsu  # noqa: F401
