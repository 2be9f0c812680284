"""Growing outputs ROI by ROI (--update), replacing them (--overwrite), and their records."""

from __future__ import annotations

import json

import numpy as np
import zarr
from conftest import blobs, same_partition, write_image
from scipy import ndimage

from engine.cli.commands import main

CONFIG = """
rois:
  left: {units: pixel, z: [0, 20], y: [0, 40], x: [0, 30]}
  right: {units: pixel, z: [0, 20], y: [10, 60], x: [40, 70]}
steps:
  - {name: smooth, op: gaussian, params: {sigma: 1.0}, output: {kind: image, name: smooth}}
  - {name: mask, op: threshold, input: smooth, params: {method: value, value: 2000}}
  - {name: cells, op: label, input: mask, output: {kind: label, name: cells}}
"""


def run_cli(tmp_path, scheduler, *extra):
    config = tmp_path / "p.yaml"
    config.write_text(CONFIG)
    return main(
        [
            "run",
            str(config),
            "--input",
            str(tmp_path / "img.zarr"),
            "--scheduler",
            scheduler,
            "--quiet",
            *extra,
        ]
    )


def test_update_adds_a_second_roi_and_keeps_the_first(tmp_path, scheduler):
    img = blobs((20, 60, 70), seed=5)
    write_image(tmp_path / "img.zarr", img, (10, 16, 16))
    assert run_cli(tmp_path, scheduler, "--roi", "left") == 0
    root = zarr.open_group(str(tmp_path / "img.zarr"), mode="r")
    first_labels = root["labels/cells/s0"][...]
    first_max = int(first_labels.max())
    assert first_max > 0

    assert run_cli(tmp_path, scheduler, "--roi", "right", "--update") == 0
    labels = root["labels/cells/s0"][...]
    smooth = root["results/smooth/s0"][...]

    ref_smooth = ndimage.gaussian_filter(img.astype(np.float32), 1.0)
    left = (slice(0, 20), slice(0, 40), slice(0, 30))
    right = (slice(0, 20), slice(10, 60), slice(40, 70))
    for window in (left, right):
        np.testing.assert_array_equal(smooth[window], ref_smooth[window])
        ref, _ = ndimage.label(ref_smooth[window] > 2000)
        assert same_partition(labels[window], ref)
    untouched = np.ones(img.shape, dtype=bool)
    untouched[left] = untouched[right] = False
    assert not smooth[untouched].any() and not labels[untouched].any()
    # the first ROI's ids are kept; the second run's ids come after them
    np.testing.assert_array_equal(labels[left], first_labels[left])
    assert labels[right][labels[right] > 0].min() > first_max

    record = root["labels/cells"].attrs["ngff_engine"]
    assert [r["roi"]["start"] for r in record["runs"]] == [[0, 0, 0], [0, 10, 40]]
    assert record["max_label"] == int(labels.max())


def test_overwrite_replaces_and_info_lists_outputs(tmp_path, scheduler, cli):
    write_image(tmp_path / "img.zarr", blobs((20, 60, 70), seed=6), (10, 16, 16))
    assert run_cli(tmp_path, scheduler, "--roi", "left") == 0
    assert run_cli(tmp_path, scheduler, "--roi", "right", "--overwrite") == 0
    root = zarr.open_group(str(tmp_path / "img.zarr"), mode="r")
    labels = root["labels/cells/s0"][...]
    assert not labels[:, :, :30].any()  # the left ROI's result is gone
    assert len(root["labels/cells"].attrs["ngff_engine"]["runs"]) == 1

    ran = cli(["info", str(tmp_path / "img.zarr"), "--json"])
    assert ran.code == 0
    info = json.loads(ran.out)
    assert [x["name"] for x in info["labels"]] == ["cells"]
    assert [x["name"] for x in info["results"]] == ["smooth"]
    assert info["labels"][0]["runs"] == 1 and info["labels"][0]["levels"] == 2
