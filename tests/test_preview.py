"""`ngff-engine preview`: a PNG of an ROI with coloured label outlines."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import zarr
from skimage.segmentation import find_boundaries

from engine.cli.commands import main
from engine.io.preview import class_colour, label_colour, stretch
from engine.io.sample_zarr import write_sample

SHAPE = (32, 128, 160)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(write_sample(tmp_path_factory.mktemp("preview") / "s.zarr", SHAPE, seed=2))


def _preview(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["preview", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _coloured(rgb: np.ndarray) -> np.ndarray:
    """Outline pixels: the only non-grey ones (label colours are fully saturated)."""
    return (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])


def test_max_projection_of_the_test_roi_with_truth_outlines(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "p.png"
    code, text = _preview(
        capsys,
        str(sample),
        "--roi",
        "test",
        "--labels",
        "truth",
        "--max",
        "--scale",
        "1",
        "--out",
        str(png),
    )
    assert code == 0, text
    assert "scale 1" in text and ", max," in text
    rgb = iio.imread(png)[:64]  # the picture; the caption is below it
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


def test_a_plane_and_the_annotations(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "plane.png"
    argv = [str(sample), "--roi", "train", "--labels", "truth", "--plane", "16", "--out", str(png)]
    assert _preview(capsys, *argv + ["--scale", "1"])[0] == 0
    rgb = iio.imread(png)[:64]
    assert rgb.shape == (64, 80, 3)
    ids = zarr.open_group(str(sample), mode="r")["labels/truth/s0"][16, :64, :80]
    np.testing.assert_array_equal(_coloured(rgb), find_boundaries(ids, mode="inner") & (ids != 0))
    # scribbles: two classes, two colours, all inside the train ROI
    png = tmp_path / "ann.png"
    assert (
        _preview(
            capsys,
            str(sample),
            "--roi",
            "train",
            "--labels",
            "annotations",
            "--scale",
            "1",
            "--out",
            str(png),
        )[0]
        == 0
    )
    rgb = iio.imread(png)[:64]
    colours = {tuple(c) for c in rgb[_coloured(rgb)].tolist()}
    assert colours == {class_colour(1), class_colour(2)}  # classes, with a legend
    # a pixel range at level 1, no labels: grey only
    png = tmp_path / "range.png"
    argv = [str(sample), "--roi", "0:32,0:20,0:30", "--level", "1", "--max", "--out", str(png)]
    assert _preview(capsys, *argv, "--scale", "1")[0] == 0
    rgb = iio.imread(png)[:20]
    assert rgb.shape == (20, 30, 3) and not _coloured(rgb).any() and rgb.std() > 10


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--roi", "nope"], ["roi 'nope'", "test, train"]),
        (["--labels", "nope"], ["labels/nope", "truth, annotations"]),
        (["--roi", "train", "--plane", "99"], ["--plane 99", "0..31"]),
    ],
)
def test_mistakes_get_one_line(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra, words
) -> None:
    code, text = _preview(capsys, str(sample), "--out", str(tmp_path / "x.png"), *extra)
    assert code == 2
    assert "Traceback" not in text and all(w in text for w in words), text
    assert not (tmp_path / "x.png").exists()


def test_default_scale_and_the_centre_plane_when_outlines_overlap(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Default: long side >= 512 px (80 px -> 7x), labels enlarged by nearest neighbour
    before their outlines are found; 3D truth outlines overlap along z, so the plane
    through the ROI's centre (z 16 of 0..32), and the message and caption say so."""
    png = tmp_path / "big.png"
    code, text = _preview(
        capsys, str(sample), "--roi", "test", "--labels", "truth", "--out", str(png)
    )
    assert code == 0, text
    assert "scale 7" in text and "plane 16 (the ROI's centre)" in text
    assert "objects of truth outlined" in text and "in the ROI)" in text
    full = iio.imread(png)
    rgb = full[: 64 * 7]
    assert rgb.shape == (448, 560, 3) and full.shape[0] > 448  # the caption below
    ids = zarr.open_group(str(sample), mode="r")["labels/truth/s0"][16, 64:128, 80:160]
    big = np.repeat(np.repeat(ids, 7, axis=0), 7, axis=1)
    np.testing.assert_array_equal(_coloured(rgb), find_boundaries(big, mode="inner") & (big != 0))
    from engine.io.preview import caption, render_preview

    result = render_preview(sample, "test", "truth")
    lines, _ = caption(result, sample)
    assert "plane z=16 (the ROI's centre" in lines[1]
    assert f"{result.n_labels} objects outlined, {result.in_roi} in the ROI" in lines[2]
    whole = zarr.open_group(str(sample), mode="r")["labels/truth/s0"][:, 64:128, 80:160]
    assert result.in_roi == len(np.unique(whole)) - 1


def test_comparison_colours_match_a_hand_computed_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2D image, labels A against reference B, by hand:
    A1 = B5 exactly (true positive); A2 alone (false positive); B7 alone (false negative);
    A3 (4x4) holds B9 (2x2): IoU 4/16 < 0.5, so A3 a false positive and B9 a false negative."""
    from conftest import write_image
    from test_tables_evaluate import add_labels

    from engine.io.preview import FALSE_NEGATIVE, FALSE_POSITIVE, TRUE_POSITIVE

    image = write_image(
        tmp_path / "tiny.zarr", np.full((12, 16), 100, np.uint16), (12, 16), levels=1
    )
    a = np.zeros((12, 16), np.uint32)
    b = np.zeros((12, 16), np.uint32)
    a[1:5, 1:5], b[1:5, 1:5] = 1, 5
    a[1:5, 8:12] = 2
    b[7:11, 1:5] = 7
    a[7:11, 8:12] = 3
    b[8:10, 9:11] = 9
    add_labels(image, "a", a, (12, 16))
    add_labels(image, "b", b, (12, 16))

    def ring(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        mask = np.zeros((12, 16), bool)
        mask[r0:r1, c0:c1] = True
        mask[r0 + 1 : r1 - 1, c0 + 1 : c1 - 1] = False
        return mask

    want = np.full((12, 16, 3), -1)
    want[ring(1, 5, 1, 5)] = TRUE_POSITIVE
    want[ring(1, 5, 8, 12) | ring(7, 11, 8, 12)] = FALSE_POSITIVE
    want[ring(7, 11, 1, 5) | ring(8, 10, 9, 11)] = FALSE_NEGATIVE

    png = tmp_path / "cmp.png"
    argv = [str(image), "--labels", "a", "--reference", "b", "--scale", "1", "--out", str(png)]
    code, text = _preview(capsys, *argv)
    assert code == 0, text
    assert "1 true positives, 2 false positives, 2 false negatives" in text
    assert ", plane, " in text  # a 2D image: its plane, not a projection
    rgb = iio.imread(png)[:12].astype(int)
    drawn = want[..., 0] >= 0
    np.testing.assert_array_equal(rgb[drawn], want[drawn])
    assert not _coloured(rgb[~drawn].reshape(-1, 1, 3)).any()  # grey elsewhere
