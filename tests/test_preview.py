"""`ngff-engine preview`: a PNG of an ROI with coloured label outlines."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import zarr
from conftest import Cli, SampleImages
from skimage.segmentation import find_boundaries

from engine.io.preview import label_colour, stretch

SHAPE = (32, 128, 160)


@pytest.fixture(scope="module")
def sample(sample_image: SampleImages) -> Path:
    return sample_image(SHAPE, seed=2)


def _preview(cli: Cli, *argv: str) -> tuple[int, str]:
    ran = cli(["preview", *argv])
    return ran.code, ran.output


def _coloured(rgb: np.ndarray) -> np.ndarray:
    """Outline pixels: the only non-grey ones (label colours are fully saturated)."""
    return (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])


def test_max_projection_of_the_test_roi_with_truth_outlines(
    sample: Path, tmp_path: Path, cli: Cli
) -> None:
    png = tmp_path / "p.png"
    code, text = _preview(cli, str(sample), "--roi", "test", "--labels", "truth", "--out", str(png))
    assert code == 0, text
    assert "80x64 px" in text
    rgb = iio.imread(png)
    # the test ROI is the bottom-right quarter: y 64..128, x 80..160
    assert rgb.shape == (64, 80, 3) and rgb.dtype == np.uint8
    colours = {tuple(c) for c in rgb[_coloured(rgb)].tolist()}
    assert len(colours) >= 10
    # the same picture computed on the whole arrays in memory
    root = zarr.open_group(str(sample), mode="r")
    window = (slice(None), slice(64, 128), slice(80, 160))
    grey = stretch(root["s0"][...][window].max(axis=0))
    ids = root["labels/truth/s0"][...][window].max(axis=0)
    edges = find_boundaries(ids, mode="inner") & (ids != 0)
    np.testing.assert_array_equal(_coloured(rgb), edges)
    np.testing.assert_array_equal(rgb[~edges][:, 0], grey[~edges])
    found = np.unique(ids[edges])
    np.testing.assert_array_equal(
        rgb[edges], label_colour(found)[np.searchsorted(found, ids[edges])]
    )
    assert grey.min() == 0 and grey.max() == 255  # stretched to the full range


def test_a_plane_and_the_annotations(sample: Path, tmp_path: Path, cli: Cli) -> None:
    png = tmp_path / "plane.png"
    argv = [str(sample), "--roi", "train", "--labels", "truth", "--plane", "16", "--out", str(png)]
    assert _preview(cli, *argv)[0] == 0
    rgb = iio.imread(png)
    assert rgb.shape == (64, 80, 3)
    ids = zarr.open_group(str(sample), mode="r")["labels/truth/s0"][16, :64, :80]
    np.testing.assert_array_equal(_coloured(rgb), find_boundaries(ids, mode="inner") & (ids != 0))
    # scribbles: two classes, two colours, all inside the train ROI
    png = tmp_path / "ann.png"
    assert (
        _preview(cli, str(sample), "--roi", "train", "--labels", "annotations", "--out", str(png))[
            0
        ]
        == 0
    )
    rgb = iio.imread(png)
    colours = {tuple(c) for c in rgb[_coloured(rgb)].tolist()}
    assert colours == {tuple(c) for c in label_colour(np.array([1, 2])).tolist()}
    # a pixel range at level 1, no labels: grey only
    png = tmp_path / "range.png"
    argv = [str(sample), "--roi", "0:32,0:20,0:30", "--level", "1", "--max", "--out", str(png)]
    assert _preview(cli, *argv)[0] == 0
    rgb = iio.imread(png)
    assert rgb.shape == (20, 30, 3) and not _coloured(rgb).any() and rgb.std() > 10


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--roi", "nope"], ["roi 'nope'", "test, train"]),
        (["--labels", "nope"], ["labels/nope", "truth, annotations"]),
        (["--roi", "train", "--plane", "99"], ["--plane 99", "0..31"]),
    ],
)
def test_mistakes_get_one_line(sample: Path, tmp_path: Path, cli: Cli, extra, words) -> None:
    code, text = _preview(cli, str(sample), "--out", str(tmp_path / "x.png"), *extra)
    assert code == 2
    assert "Traceback" not in text and all(w in text for w in words), text
    assert not (tmp_path / "x.png").exists()
