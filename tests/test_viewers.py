"""The README's "Looking at the results": napari with napari-ome-zarr opens an image with
the engine's outputs, headless (`napari.components.ViewerModel`: no OpenGL here), and
gets the image and every label image as layers with the image's physical scale; a
result (`results/`, outside the NGFF spec) opens by its path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from engine import Pipeline
from engine.io.sample_zarr import write_sample
from engine.runs.runner import run

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# napari's and npe2's own pydantic deprecations, not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, scheduler: str) -> Path:
    path = Path(write_sample(tmp_path_factory.mktemp("viewers") / "sample.zarr", (32, 128, 128)))
    pipeline = (
        Pipeline(input=str(path))
        .add("smooth", "gaussian", sigma=2.0, output={"kind": "image", "name": "smooth"})
        .add("mask", "threshold", input="smooth", method="otsu")
        .add("nuclei", "label", input="mask", output={"kind": "label", "name": "nuclei"})
    )
    run(pipeline, roi="test", scheduler=scheduler)
    return path


def viewer_with(*paths: Path):  # type: ignore[no-untyped-def]
    import npe2
    from napari.components import ViewerModel

    npe2.PluginManager.instance().discover()  # napari-ome-zarr's reader, as napari finds it
    viewer = ViewerModel()
    for path in paths:
        viewer.open(str(path), plugin="napari-ome-zarr")
    return viewer


def test_napari_opens_the_image_and_every_label_with_its_scale(sample: Path) -> None:
    viewer = viewer_with(sample, sample / "results" / "smooth")
    root = zarr.open_group(str(sample), mode="r")
    scale = root.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    want = np.asarray(scale["scale"])
    layers = {layer.name: layer for layer in viewer.layers}
    kinds = {name: type(layer).__name__ for name, layer in layers.items()}
    labels = sorted(n.rsplit("/", 1)[-1] for n, k in kinds.items() if k == "Labels")
    assert labels == ["annotations", "nuclei", "truth"], kinds
    images = [n for n, k in kinds.items() if k == "Image"]
    assert len(images) == 2, kinds  # the image, and results/smooth by its path
    for layer in viewer.layers:
        np.testing.assert_allclose(layer.scale, want, err_msg=layer.name)
        assert layer.data[0].shape == (32, 128, 128), layer.name
        assert len(layer.data) == 3, layer.name  # every level
    nuclei = next(layer for n, layer in layers.items() if n.endswith("/nuclei"))
    np.testing.assert_array_equal(
        np.asarray(nuclei.data[0][:, 64:, 64:]), root["labels/nuclei/s0"][:, 64:, 64:]
    )
    smooth = next(layer for n, layer in layers.items() if n in images and "smooth" in n)
    assert np.asarray(smooth.data[0][16]).std() > 0
