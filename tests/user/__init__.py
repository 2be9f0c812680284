"""A user's own code, as pipelines name it (`module:function`): functions for `op: function`
(`user.functions`, `user.ops`), model factories for `op: model` (`user.models`) and
segmenters for `op: instance` (`user.segmenters`).

The workers of a test's dask cluster (local or in SLURM jobs) import these modules by
name, so the package must stay importable from tests/: pytest puts that folder on
sys.path (and worker processes inherit it); subprocesses and SLURM jobs get it through
PYTHONPATH (conftest.pythonpath_with_tests).
"""
