"""The clients behind a `Location` (engine/io/location.py): fsspec file systems and
zarr's `FsspecStore`, made once per process, URL, options and credentials; and what a
client's error means, in a few words for a one-line message."""

from __future__ import annotations

import functools
import json
import os
from typing import Any


def describe_remote_error(exc: BaseException) -> str:
    """What the server (or the client) said, in a few words."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    name = type(exc).__name__
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        reason = getattr(exc, "message", "") or ""
        return f"HTTP {status} {reason}".strip()
    if name in ("ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError"):
        return f"cannot connect ({text})"
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return (
            "no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, or "
            "storage_options key/secret; anon: true for public buckets)"
        )
    if name == "EndpointConnectionError":
        return f"cannot connect ({text})"
    if isinstance(exc, FileNotFoundError):
        if no_bucket(exc):
            return "the bucket does not exist (NoSuchBucket)"
        return "not found (HTTP 404: no zarr metadata there)"
    if isinstance(exc, PermissionError):
        return f"access denied (HTTP 403: {text})"
    return f"{name}: {text}"


def no_bucket(exc: BaseException) -> bool:
    return "bucket does not exist" in str(exc) or "NoSuchBucket" in str(exc)


def credentials_env() -> tuple[str | None, ...]:
    """The environment S3 credentials come from: part of the cache keys below, so a
    process whose environment changes (the Python API, tests) gets new clients."""
    return tuple(os.environ.get(k) for k in _AWS_ENV)


_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
)


@functools.lru_cache(maxsize=256)
def fsspec_store(url: str, options_json: str, read_only: bool, env: tuple) -> Any:
    """zarr's store for a URL (its own asynchronous file system), one per process, URL
    and credentials: making one costs a client session."""
    from zarr.storage import FsspecStore

    options = json.loads(options_json)
    if not url.startswith("http"):
        options = _s3_defaults(options)
    return FsspecStore.from_url(url, storage_options=options, read_only=read_only)


@functools.lru_cache(maxsize=32)
def filesystem(scheme: str, options_json: str, env: tuple) -> Any:
    """One fsspec file system per scheme and options, per process. Listings are never
    cached (`use_listings_cache=False`): run state changes under the engine's feet."""
    import fsspec

    options = json.loads(options_json)
    if scheme in ("http", "https"):
        options.setdefault("skip_instance_cache", False)
    else:
        options = _s3_defaults(options)
    return fsspec.filesystem(scheme, asynchronous=False, **options)


def _s3_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """s3fs settings for the engine's access pattern. `max_concurrency=1`: with more,
    s3fs sends a HEAD before every whole-object GET (to split large objects into ranged
    reads): counted on the moto server, every chunk read was a HEAD and a GET; chunks
    are far below its 50 MB block, so the HEAD bought nothing. Concurrency across
    chunks comes from zarr and the chunk cache instead."""
    return {
        "use_listings_cache": False,
        "skip_instance_cache": True,
        "max_concurrency": 1,
        **options,
    }
