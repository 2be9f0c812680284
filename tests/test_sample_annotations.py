"""`ngff-engine sample` writes ROIs `train`/`test` (an ROI table) and scribbles in `train`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage

from engine.cli.commands import main
from engine.core.geometry import Roi
from engine.core.pipeline import Pipeline
from engine.io.metadata import read_image
from engine.io.roi_tables import read_rois
from engine.io.rois import named_roi, resolve_roi
from engine.io.sample_image import BACKGROUND, NUCLEUS, make_annotations, make_nuclei, sample_rois
from engine.io.sample_zarr import write_sample

SHAPE = (32, 128, 128)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "s.zarr"
    assert main(["sample", str(path), "--shape", ",".join(map(str, SHAPE)), "--seed", "3"]) == 0
    return path


def _boxes(path: Path) -> dict[str, Roi]:
    meta = read_image(path)
    bare = Pipeline()
    return {
        name: resolve_roi(named_roi(bare, name, meta), meta, 0, name) for name in ("train", "test")
    }


def test_train_and_test_rois_are_disjoint_large_and_in_the_table(sample: Path) -> None:
    rois = read_rois(sample)
    assert list(rois) == ["train", "test"]
    assert all(table == "rois" for table, _ in rois.values())
    assert zarr.open_group(str(sample / "tables/rois"), mode="r").attrs["type"] == "roi_table"
    boxes = _boxes(sample)
    expected = sample_rois(SHAPE)
    for name, box in boxes.items():
        assert box == Roi(
            tuple(s.start for s in expected[name]), tuple(s.stop for s in expected[name]), 0
        )
        voxels = np.prod([b - a for a, b in zip(box.start, box.stop)])
        assert voxels >= 0.2 * np.prod(SHAPE)
    assert boxes["train"].intersect(boxes["test"]).empty()
    # physical units: y/x spacing 0.5 um, z 1 um
    assert rois["test"][1]["y"] == (32.0, 64.0) and rois["test"][1]["z"] == (0.0, 32.0)


def test_annotations_are_a_listed_label_image_with_sparse_strokes_in_train(sample: Path) -> None:
    root = zarr.open_group(str(sample), mode="r")
    labels_attrs = root["labels"].attrs.asdict()
    assert labels_attrs["ome"]["labels"] == ["truth", "annotations"]
    group = root["labels/annotations"]
    ome = group.attrs.asdict()["ome"]
    assert "image-label" in ome
    levels = [d["path"] for d in ome["multiscales"][0]["datasets"]]
    truth_levels = root["labels/truth"].attrs.asdict()["ome"]["multiscales"][0]["datasets"]
    assert len(levels) == len(truth_levels) == 3
    ann = group[levels[0]][...]
    truth = root["labels/truth/s0"][...]
    assert ann.dtype == np.uint8 and ann.shape == SHAPE
    assert set(np.unique(ann).tolist()) == {0, BACKGROUND, NUCLEUS}
    box = _boxes(sample)["train"]
    train = tuple(slice(a, b) for a, b in zip(box.start, box.stop))
    outside = np.ones(SHAPE, dtype=bool)
    outside[train] = False
    assert not ann[outside].any()
    assert 0 < np.count_nonzero(ann) < 0.01 * np.count_nonzero(~outside)
    # nucleus strokes lie inside nuclei, through several of them
    assert np.all(truth[ann == NUCLEUS] > 0)
    assert len(np.unique(truth[ann == NUCLEUS])) >= 3
    # background strokes keep 3 px (1 plane in z) away from every nucleus
    near = ndimage.binary_dilation(truth > 0, structure=np.ones((3, 7, 7), dtype=bool))
    assert not near[ann == BACKGROUND].any()
    assert np.count_nonzero(ann == BACKGROUND) >= 20
    # lower levels are the nearest-neighbour (strided) pyramid, as for truth
    np.testing.assert_array_equal(group[levels[1]][...], ann[:, ::2, ::2])
    info_attrs = group.attrs.asdict()["ngff_engine"]["sample"]
    assert info_attrs["classes"] == {"background": 1, "nucleus": 2}


def test_deterministic_for_a_seed_and_make_nuclei_unchanged(tmp_path: Path) -> None:
    shape = (16, 64, 64)
    a = write_sample(tmp_path / "a.zarr", shape, version="0.4", seed=5)
    b = write_sample(tmp_path / "b.zarr", shape, version="0.4", seed=5)
    c = write_sample(tmp_path / "c.zarr", shape, version="0.4", seed=6)
    ann = [zarr.open_group(p, mode="r")["labels/annotations/s0"][...] for p in (a, b, c)]
    np.testing.assert_array_equal(ann[0], ann[1])
    assert not np.array_equal(ann[0], ann[2])
    # the image and truth are make_nuclei's, untouched by the annotations
    s = make_nuclei(shape, 5)
    root = zarr.open_group(a, mode="r")
    np.testing.assert_array_equal(root["s0"][...], s.image)
    np.testing.assert_array_equal(root["labels/truth/s0"][...], s.truth)
    np.testing.assert_array_equal(ann[0], make_annotations(s.truth, sample_rois(shape)["train"], 5))
    assert read_rois(a)["train"][1]["x"] == (0.0, 16.0)


def test_2d_sample_gets_rois_and_annotations(tmp_path: Path) -> None:
    path = write_sample(tmp_path / "flat.zarr", (128, 128), seed=1)
    root = zarr.open_group(path, mode="r")
    ann = root["labels/annotations/s0"][...]
    assert ann.shape == (128, 128)
    assert not ann[64:, :].any() and not ann[:, 64:].any()
    assert {BACKGROUND, NUCLEUS} <= set(np.unique(ann).tolist())
    boxes = _boxes(Path(path))
    assert boxes["test"] == Roi((64, 64), (128, 128), 0)
