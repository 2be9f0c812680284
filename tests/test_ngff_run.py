"""A small pipeline on NGFF images with time and channel axes (5D and t,z,y,x, written
by hand as in the spec examples), checked against scipy on the whole array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import same_partition
from ngff_by_hand import write_5d, write_tzyx
from scipy import ndimage as ndi

from engine import Pipeline, RoiSpec, run
from engine.io.metadata import ImageMeta, read_image

THRESHOLD = 500.0


def _pipeline(path: Path) -> Pipeline:
    return (
        Pipeline(input=str(path))
        .add("smooth", "gaussian", sigma=1.0)
        .add("mask", "threshold", input="smooth", method="value", value=THRESHOLD)
        .add("nuclei", "label", input="mask", output={"kind": "label", "name": "nuclei"})
    )


def _oracle(volume: np.ndarray, box: tuple[slice, ...]) -> tuple[np.ndarray, int]:
    smooth = ndi.gaussian_filter(volume.astype(np.float32), 1)
    return ndi.label(smooth[box] > THRESHOLD)


def _check_labels(
    path: Path,
    source: ImageMeta,
    frames: np.ndarray,
    t_range: range,
    box: tuple[slice, ...],
    count: int,
) -> None:
    """Labels at labels/nuclei: t,z,y,x; per time point in `t_range` equal to the oracle
    inside `box` and zero outside it; zero at every other time point."""
    out = read_image(path / "labels" / "nuclei")
    assert out.version == source.version
    assert out.axis_names == ("t", "z", "y", "x")
    keep = [i for i, a in enumerate(source.axis_names) if a != "c"]
    assert len(out.levels) == len(source.levels)
    for lv, src in zip(out.levels, source.levels, strict=True):
        assert lv.shape == tuple(src.shape[i] for i in keep)
        assert lv.scale == pytest.approx(tuple(src.scale[i] for i in keep))
        assert lv.translation == pytest.approx(tuple(src.translation[i] for i in keep))
    labels = zarr.open_array(str(path / "labels" / "nuclei" / out.levels[0].path), mode="r")[...]
    total = 0
    ids_seen: set[int] = set()
    for t in range(labels.shape[0]):
        if t not in t_range:
            assert not labels[t].any(), f"time point {t} is outside the ROI but has labels"
            continue
        want, n = _oracle(frames[t], box)
        assert n >= 3, "the test data should hold several objects per time point"
        assert same_partition(labels[t][box], want)
        outside = labels[t].copy()
        outside[box] = 0
        assert not outside.any(), f"time point {t}: labels outside the ROI"
        ids = set(np.unique(labels[t][box]).tolist()) - {0}
        assert not ids & ids_seen, "ids repeat across time points"
        ids_seen |= ids
        total += n
    assert count == total
    # coarser levels hold something where the ROI was, nothing at other time points
    coarse = zarr.open_array(str(path / "labels" / "nuclei" / out.levels[-1].path), mode="r")[...]
    for t in range(coarse.shape[0]):
        assert coarse[t].any() == (t in t_range)
    listed = zarr.open_group(str(path / "labels"), mode="r").attrs.asdict()
    listed = listed.get("ome", listed)
    assert "nuclei" in listed["labels"]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_run_on_5d_roi_restricts_t_and_c(tmp_path: Path, version: str, scheduler: str) -> None:
    path = tmp_path / "5d.zarr"
    data = write_5d(path, version)
    source = read_image(path)
    roi = RoiSpec(t=(1, 3), c=(1, 2), y=(5, 37))
    result = run(_pipeline(path), roi=roi, scheduler=scheduler)
    assert result.outputs == {"nuclei": str(path / "labels" / "nuclei")}
    box = (slice(None), slice(5, 37), slice(None))
    # the ROI's first channel (1) is the one to process; channel 0 would give other objects
    assert not np.array_equal(_oracle(data[1, 0], box)[0] > 0, _oracle(data[1, 1], box)[0] > 0)
    _check_labels(path, source, data[:, 1], range(1, 3), box, result.labels["nuclei"])


def test_run_on_tzyx(tmp_path: Path, scheduler: str) -> None:
    path = tmp_path / "tzyx.zarr"
    data = write_tzyx(path, "0.5")
    source = read_image(path)
    result = run(_pipeline(path), roi={"t": (1, 2), "z": (1, 5)}, scheduler=scheduler)
    box = (slice(1, 5), slice(None), slice(None))
    _check_labels(path, source, data, range(1, 2), box, result.labels["nuclei"])
