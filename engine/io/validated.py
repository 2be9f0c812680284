"""Image attributes ome-zarr-models accepted before, remembered by content, so that a
run on an image whose metadata it has seen does not import ome-zarr-models again.

Importing ome-zarr-models (its pydantic models of every NGFF 0.4 and 0.5 group) took
0.15 to 0.2 s of a cold command on this machine, against ~0.2 s of compute for the
64x256x256 sample: the largest import a run has that scipy's own script has not. The
answer of a validation is a function of the attributes validated and of the versions of
the libraries that validate them; so the key is a SHA-256 of exactly those, and only
acceptances are kept (an invalid image is validated, and refused, every time). The
first run on unseen metadata (a new image, or a listing that changed) pays the import.

One empty file per key under `~/.ngff-engine/validated/` (NGFF_ENGINE_CACHE_DIR
instead of `~/.ngff-engine`; `NGFF_ENGINE_CACHE_DIR=off`: validate every time). A
folder that cannot be written only means validating every time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

# the libraries whose versions decide what is valid
VALIDATORS = ("ome-zarr-models", "pydantic", "pydantic-core", "pydantic-zarr")


def _folder() -> Path | None:
    base = os.environ.get("NGFF_ENGINE_CACHE_DIR", "").strip()
    if base.lower() == "off":
        return None
    return (Path(base) if base else Path.home() / ".ngff-engine") / "validated"


def content_key(version: str, checks: list[tuple[str, str, dict[str, Any]]]) -> str | None:
    """The key of validating `checks` ((error prefix, model name, attributes)) of an
    NGFF `version` image with the installed validators; None: no cache."""
    versions = _validator_versions()
    if _folder() is None or versions is None:
        return None
    try:
        text = json.dumps([versions, version, checks], sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def _validator_versions() -> list[str] | None:
    """Read once per process (4 ms: the warm engine validates at every call)."""
    try:
        return [metadata.version(name) for name in VALIDATORS]
    except metadata.PackageNotFoundError:
        return None


def accepted_before(key: str | None) -> bool:
    folder = _folder()
    return key is not None and folder is not None and (folder / key).is_file()


def remember(key: str | None) -> None:
    folder = _folder()
    if key is None or folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        (folder / key).touch()
    except OSError:
        pass  # validated every time
