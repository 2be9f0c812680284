"""The engine's version, as installed (or the source tree's when run uninstalled)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ngff-engine")
except PackageNotFoundError:
    __version__ = "0.1.0+src"
