"""User-facing errors: one line that names what is wrong and where.

Anything raised as an `EngineError` is the user's to fix (a config field, a path,
an ROI); the CLI prints its message alone and exits non-zero. Anything else is a
bug and keeps its traceback.
"""


class EngineError(Exception):
    """A problem with the user's input, reported without a traceback."""


class ConfigError(EngineError):
    """The pipeline config (YAML or Python) is invalid."""


class NgffError(EngineError):
    """An image or output on disk is not what OME-Zarr requires."""


class OutputConflict(EngineError):
    """An output exists and the run was not allowed to change it."""
