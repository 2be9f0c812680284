"""Living beside ngio: 0.4 images read in a process that imported ngio first, and 0.4
outputs written with `/` chunk keys as ngio and ome-zarr-py write them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
import zarr
from conftest import blobs

from engine.core.pipeline import Pipeline
from engine.io.metadata import read_image
from engine.runs.runner import run

PIPELINE = """
steps:
  - {name: smooth, op: gaussian, params: {sigma: 1.0}}
  - {name: mask, op: threshold, input: smooth, params: {method: otsu}}
  - {name: cells, op: label, input: mask, output: {kind: label, name: cells}}
"""

# ngio imported before the engine, as a user script that reads with ngio would.
_SCRIPT = """
import sys, json
import ngio
import numpy as np
from ngio import create_ome_zarr_from_array

path, scheduler, pipeline_text = sys.argv[1], sys.argv[2], sys.argv[3]
data = np.load(sys.argv[4])
create_ome_zarr_from_array(
    store=path, array=data, pixelsize=0.5, axes_names="cyx", ngff_version="0.4",
    chunks=(1, 32, 32), consolidation_mode="auto",
)
import yaml, engine
result = engine.run(engine.Pipeline.build(yaml.safe_load(pipeline_text)), path, scheduler=scheduler)
print(json.dumps({"outputs": sorted(result.outputs)}))
"""


def test_04_image_runs_in_a_process_that_imported_ngio_first(
    tmp_path: Path, scheduler: str
) -> None:
    data = blobs((1, 64, 96), seed=5)
    np.save(tmp_path / "data.npy", data)
    path = tmp_path / "ngio.zarr"
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(path), scheduler, PIPELINE, str(tmp_path / "data.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cells" in json.loads(done.stdout.strip().splitlines()[-1])["outputs"]
    level = read_image(path / "labels/cells", validate=False).levels[0].path
    assert np.asarray(zarr.open_array(str(path / "labels/cells" / level), mode="r")).max() > 0


def test_04_outputs_have_slash_chunk_keys(tmp_path: Path, scheduler: str) -> None:
    from conftest import write_image

    path = write_image(tmp_path / "img.zarr", blobs((8, 64, 64), seed=2), (8, 32, 32), "0.4")
    run(Pipeline.build(yaml.safe_load(PIPELINE)), path, scheduler=scheduler)
    level = path / "labels/cells/s0"
    meta = json.loads((level / ".zarray").read_text())
    assert meta["dimension_separator"] == "/"
    assert (level / "0/1/1").is_file()
    assert not list(level.glob("0.*"))
    # ome-zarr-py reads them back
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(path / "labels/cells")))())
    assert np.asarray(nodes[0].data[0]).max() > 0
