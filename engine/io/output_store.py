"""Where a run's outputs go: into the image, or into a separate output store.

An output store is an OME-Zarr group of its own (same zarr format as the image) that
holds the engine's outputs for one image, in the image's own layout: `labels/<name>`
(NGFF label images, listed in `labels/` attributes), `results/`, `tables/` and
`_engine/` (run records, markers, locks). Its root attributes record the source image:

    {"ngff_engine_outputs": {"image": "<the image's URL or path>", "engine_version": ...}}

so a later run given the same store finds its outputs, versions and interrupted runs
(reuse, `versions: keep` and `--resume` work as in-image), and a store made for another
image is refused. Label images point back to the image by its URL
(`image-label.source.image`), since `../../` would name the store's root.

An image that cannot be written (HTTP, a read-only file system) needs a store: a run
without one is refused before anything is written.
"""

from __future__ import annotations

from typing import Any

from engine.core.errors import EngineError
from engine.core.version import __version__
from engine.io.location import Location, Workspace
from engine.io.metadata import ImageMeta

STORE_KEY = "ngff_engine_outputs"


def workspace(
    meta: ImageMeta,
    output: str | Location | None = None,
    storage_options: dict[str, Any] | None = None,
    token: str = "",
    writing: bool = True,
) -> Workspace:
    """The workspace of a run (or plan) on `meta`, outputs in `output` when given.

    Refuses (one line) an image that cannot be written when no store is given
    (`writing`), and a store that belongs to another image or is not an output store."""
    image = meta.location
    if output is None:
        if writing and image.read_only:
            http = image.scheme.startswith("http")
            why = "HTTP is read-only" if http else "read-only file system or no permission"
            copy = "" if http else ", or copy the image to a writable place"
            raise EngineError(
                f"{image}: the image is not writable ({why}); write the outputs to a "
                "separate store with --output PATH_OR_URL (output_store: in the config, "
                f"output= in Python){copy}"
            )
        return Workspace.of(image, token=token)
    store = Location.parse(output, storage_options)
    if store == image or (store.is_local and image_url(store) == image_url(image)):
        return Workspace.of(image, token=token)
    if store.read_only and writing:
        raise EngineError(f"{store}: the output store is not writable")
    check_store(store, meta)
    return Workspace(image, store, token)


def check_store(store: Location, meta: ImageMeta) -> None:
    """Refuse an existing store that is not an output store of this image."""
    if store.is_local and store.exists() and not store.local_path.is_dir():
        raise EngineError(f"{store}: the output store exists and is not a folder")
    if not store.exists():
        return
    attrs = store.read_attrs()
    if attrs is None:
        if store.list():
            raise EngineError(
                f"{store}: the output store exists and is not a zarr group; give an empty or "
                "new location"
            )
        return
    recorded = attrs.get(STORE_KEY, {}).get("image")
    if recorded is None:
        raise EngineError(f"{store}: a zarr group that is not an ngff-engine output store")
    if recorded != image_url(meta.location):
        raise EngineError(
            f"{store}: the output store holds outputs of {recorded}, not of {meta.path}"
        )


def prepare_store(ws: Workspace, meta: ImageMeta) -> None:
    """Create the output store's root group (once), recording its image."""
    if not ws.separate or ws.output.read_attrs() is not None:
        return
    import zarr

    from engine.io.ngff_write import zarr_format

    zarr.open_group(
        ws.output.zarr_url(),
        mode="a",
        zarr_format=zarr_format(meta.version),
        attributes={STORE_KEY: {"image": image_url(ws.image), "engine_version": __version__}},
    )


def source_image(ws: Workspace, depth: int) -> str:
    """What an output `depth` groups below the root names as its source image: the
    relative path in-image, the image's URL from a separate store."""
    return image_url(ws.image) if ws.separate else "../" * depth


def image_url(image: Location) -> str:
    """How a store names its image: the URL, or a local image's absolute path (a store
    is found again from any working folder)."""
    return str(image.local_path.resolve()) if image.is_local else image.url
