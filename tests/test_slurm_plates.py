"""A plate as one SLURM batch job (`ngff-engine submit --input plate.zarr`), on the real
one-node SLURM of slurm/dev-cluster.sh: the selected wells' fields written as a local
plate run writes them, the plate-level table, and `status JOB` showing the one overall
count across the plate."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import yaml
import zarr
from conftest import same_partition
from slurm_jobs import cli_process, spec
from test_plates import _expected, _pipeline, ngio_plate

from engine.runs.submit import find_run
from engine.runs.units import UnitsResult


def test_submit_a_plate_as_one_batch_job(slurm, tmp_path: Path) -> None:
    path, fields = ngio_plate(tmp_path, (1, 48, 64))
    config = tmp_path / "plate.yaml"
    cluster = spec(tmp_path, jobs=1)
    config.write_text(yaml.safe_dump({**_pipeline().to_dict(), "cluster": cluster}))
    base = ["submit", str(config), "--input", str(path), "--wells", "B03,C05"]
    bad = cli_process(*base[:-1], "B03,Z99", "--wait", cwd=tmp_path)
    assert bad.returncode == 2 and "Z99 not in the plate" in bad.stderr  # refused, not queued
    assert not (tmp_path / "shared" / "runs").exists()

    proc = cli_process(*base, "--wait", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "submitted batch job" in proc.stdout
    chosen = [k for k in fields if k.startswith(("B/03", "C/05"))]
    for unit in ("B03/0", "B03/1", "C05/0", "C05/1"):
        assert f"{unit}: run " in proc.stdout
    assert "4 units in" in proc.stdout and "plate table stats" in proc.stdout
    total = 0
    for key, data in fields.items():
        written = (path / key / "labels/nuclei").exists()
        assert written == (key in chosen), key
        if written:
            group = zarr.open_group(str(path / key / "labels/nuclei"), mode="r")
            labels = group[sorted(k for k, _ in group.arrays())[0]][...]
            assert same_partition(labels.reshape(data.shape), _expected(data)), key
            total += int(labels.max())
    table = anndata.read_zarr(str(path / "tables/stats"))
    assert len(table) == total and set(table.obs["well"]) == {"B03", "C05"}

    job = proc.stdout.split("submitted batch job")[1].split()[0]
    status = cli_process("status", job, "--shared-dir", str(tmp_path / "shared"), "--json",
                         cwd=tmp_path)  # fmt: skip
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["state"] == "done"
    assert set(info["progress"]) == {"4 images", "units done"}
    assert info["progress"]["units done"] == [4, 4]
    done, tasks = info["progress"]["4 images"]
    assert done == tasks > 0
    result = find_run(info["run"]).wait(timeout=10)
    assert isinstance(result, UnitsResult) and len(result.results) == 4
    assert sum(result.labels.values()) == total
