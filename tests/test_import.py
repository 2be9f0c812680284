"""`ngff-engine import`: TIFF (plain, tiled, ImageJ, OME, multi-series), plane series and
HDF5 to OME-Zarr on the shared test cluster, checked against the source array, the
engine's own downsampling, the source's metadata, ome-zarr-models, ome-zarr-py and ngio;
kill -9 and --resume; each bad input.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from engine import import_image
from engine.cli.commands import main
from engine.io.downsample import block_mean
from engine.io.metadata import read_image
from engine.io.sources import SourceInfo
from engine.plan.importing import TASK_BUDGET_BYTES, import_levels, level_factors, task_grid
from engine.state.markers import read_records

TESTS = Path(__file__).parent


def data(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)


def check_image(
    out: Path,
    expected: np.ndarray,
    axes: str,
    scale: dict[str, float],
    units: dict[str, str],
    levels: int,
    version: str = "0.5",
) -> None:
    """s0 equals the source; each level is the engine's block mean of the one below;
    axes, scales, units as the source said; valid for ome-zarr-models, ome-zarr-py, ngio."""
    meta = read_image(out)  # validates with ome-zarr-models
    assert meta.version == version
    assert meta.axis_names == tuple(axes)
    for i, a in enumerate(meta.axes):
        assert a.unit == units.get(a.name), (a, units)
        assert meta.levels[0].scale[i] == pytest.approx(scale.get(a.name, 1.0))
    assert len(meta.levels) == levels
    root = zarr.open_group(str(out), mode="r")
    below = np.asarray(root["s0"][...])
    assert below.dtype == expected.dtype
    np.testing.assert_array_equal(below, expected)
    for k in range(1, levels):
        factors = level_factors(axes, meta.levels[k - 1].scale)
        assert meta.levels[k].scale == pytest.approx(
            [s * f for s, f in zip(meta.levels[k - 1].scale, factors)]
        )
        level = np.asarray(root[f"s{k}"][...])
        np.testing.assert_array_equal(level, block_mean(below, factors))
        below = level
    assert not list(out.parent.glob(f"{out.name}.partial-*"))
    assert not (out / "_engine").exists()
    _open_elsewhere(out, expected.shape)


def _open_elsewhere(out: Path, shape: tuple[int, ...]) -> None:
    from ngio import open_ome_zarr_container
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(out)))())
    assert tuple(nodes[0].data[0].shape) == shape
    container = open_ome_zarr_container(str(out))
    assert tuple(container.get_image().shape) == shape


def provenance(out: Path) -> dict:
    attrs = zarr.open_group(str(out), mode="r").attrs.asdict()
    return attrs["ngff_engine"]["import"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_plain_tiff_3d_uint16(tmp_path: Path, scheduler: str) -> None:
    source = data((20, 48, 40), "uint16")
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, source, metadata={"axes": "ZYX"})
    out = tmp_path / "stack.zarr"
    result = import_image(
        tif,
        out,
        chunks=(8, 16, 16),
        levels=3,
        scale="z=0.5,y=0.5,x=0.5",
        unit="um",
        scheduler=scheduler,
    )
    assert result.tasks_done > 0
    # the memory projection, checked before the run, holds what the workers used
    assert 0 < max(result.peak_worker_bytes.values()) <= result.projected_worker_bytes
    units = dict.fromkeys("zyx", "micrometer")
    check_image(out, source, "zyx", dict.fromkeys("zyx", 0.5), units, 3)
    record = provenance(out)
    assert record["sha256"] == sha256(tif)
    assert record["source"] == str(tif.resolve())


def test_ome_tiff_5d_float32_tiled_ngff04(tmp_path: Path, scheduler: str) -> None:
    source = data((2, 3, 4, 32, 48), "float32")
    tif = tmp_path / "cells.ome.tif"
    tifffile.imwrite(
        tif,
        source,
        ome=True,
        tile=(16, 16),
        compression="zlib",
        metadata={
            "axes": "TCZYX",
            "PhysicalSizeX": 0.25,
            "PhysicalSizeY": 0.25,
            "PhysicalSizeZ": 1.5,
            "PhysicalSizeZUnit": "nm",
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeYUnit": "nm",
            "TimeIncrement": 30.0,
            "TimeIncrementUnit": "s",
            "Channel": {"Name": ["DAPI", "GFP", "RFP"], "Color": [-16776961, 16711935, 65535]},
        },
    )
    out = tmp_path / "cells.zarr"
    import_image(tif, out, ngff="0.4", chunks=(1, 1, 2, 16, 16), levels=2, scheduler=scheduler)
    units = {"t": "second", "z": "nanometer", "y": "nanometer", "x": "nanometer"}
    check_image(out, source, "tczyx", {"t": 30.0, "z": 1.5, "y": 0.25, "x": 0.25}, units, 2, "0.4")
    omero = zarr.open_group(str(out), mode="r").attrs["omero"]
    assert [c["label"] for c in omero["channels"]] == ["DAPI", "GFP", "RFP"]
    assert [c["color"] for c in omero["channels"]] == ["FF0000", "00FF00", "0000FF"]


def test_imagej_hyperstack_uint8_and_2d(tmp_path: Path, scheduler: str) -> None:
    source = data((5, 2, 24, 36), "uint8")  # z c y x, as ImageJ stores it
    tif = tmp_path / "hyper.tif"
    ramp = np.arange(256, dtype=np.uint8)
    magenta, green = np.zeros((3, 256), np.uint8), np.zeros((3, 256), np.uint8)
    magenta[0] = magenta[2] = green[1] = ramp
    tifffile.imwrite(
        tif,
        source,
        imagej=True,
        resolution=(1 / 0.325, 1 / 0.325),
        metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "um", "LUTs": [magenta, green]},
    )
    out = tmp_path / "hyper.zarr"
    import_image(tif, out, chunks=(1, 2, 8, 16), levels=2, scheduler=scheduler)
    units = dict.fromkeys("zyx", "micrometer")
    expected = np.moveaxis(source, 1, 0)  # NGFF order: c before z
    check_image(out, expected, "czyx", {"z": 2.0, "y": 0.325, "x": 0.325}, units, 2)
    omero = zarr.open_group(str(out), mode="r").attrs["ome"]["omero"]
    assert [c["color"] for c in omero["channels"]] == ["FF00FF", "00FF00"]  # from the LUTs

    flat = data((40, 30), "uint8", seed=3)  # 2D, resolution in centimeters
    tif2 = tmp_path / "flat.tif"
    tifffile.imwrite(tif2, flat, resolution=(10000 / 0.5, 10000 / 0.5), resolutionunit=3)
    out2 = tmp_path / "flat.zarr"
    import_image(tif2, out2, chunks=(16, 16), levels=2, scheduler=scheduler)
    check_image(out2, flat, "yx", {"y": 0.5, "x": 0.5}, dict.fromkeys("yx", "micrometer"), 2)


def test_multi_series_tiff(tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture) -> None:
    first, second = data((4, 16, 16), "uint16"), data((24, 20), "float32", seed=1)
    tif = tmp_path / "multi.tif"
    with tifffile.TiffWriter(tif) as writer:
        writer.write(first, metadata={"axes": "ZYX"})
        writer.write(second, metadata={"axes": "YX"})
    assert main(["import", str(tif), str(tmp_path / "x.zarr"), "--quiet"]) == 2  # which one?
    assert not (tmp_path / "x.zarr").exists()
    out = tmp_path / "second.zarr"
    argv = ["import", str(tif), str(out), "--series", "1", "--chunks", "8,8", "--levels", "2"]
    argv += ["--scale", "y=2,x=2", "--unit", "micrometer", "--scheduler", scheduler, "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["axes"] == "yx" and printed["shape"] == [24, 20] and printed["levels"] == 2
    check_image(out, second, "yx", {"y": 2.0, "x": 2.0}, dict.fromkeys("yx", "micrometer"), 2)


def test_plane_series_with_pattern(tmp_path: Path, scheduler: str) -> None:
    source = data((2, 6, 24, 20), "uint16")  # c z y x
    folder = tmp_path / "planes"
    folder.mkdir()
    for c in range(2):
        for z in range(6):
            tifffile.imwrite(folder / f"img_c{c}_z{z}.tif", source[c, z])
    (folder / "notes.txt").write_text("not a plane")
    out = tmp_path / "planes.zarr"
    result = import_image(
        folder,
        out,
        pattern="img_c{c}_z{z}.tif",
        chunks=(1, 4, 16, 16),
        levels=2,
        scale="z=3,y=0.5,x=0.5",
        unit="micrometer",
        scheduler=scheduler,
    )
    check_image(
        out, source, "czyx", {"z": 3.0, "y": 0.5, "x": 0.5}, dict.fromkeys("zyx", "micrometer"), 2
    )
    assert provenance(out)["files"] == 12
    assert result.sha256 is not None and len(result.sha256) == 64

    # a folder without a pattern: z in natural file order (z2 before z10)
    zfolder = tmp_path / "zplanes"
    zfolder.mkdir()
    for z in range(12):
        tifffile.imwrite(zfolder / f"plane_z{z}.tif", data((16, 16), "uint8", seed=z))
    out2 = tmp_path / "z.zarr"
    import_image(
        zfolder,
        out2,
        chunks=(4, 16, 16),
        levels=1,
        scale="z=1,y=1,x=1",
        unit="um",
        scheduler=scheduler,
    )
    expected = np.stack([data((16, 16), "uint8", seed=z) for z in range(12)])
    check_image(
        out2, expected, "zyx", dict.fromkeys("zyx", 1.0), dict.fromkeys("zyx", "micrometer"), 1
    )


def test_hdf5_dataset_sharded(tmp_path: Path, scheduler: str) -> None:
    source = data((12, 40, 32), "float32")
    h5 = tmp_path / "bdv.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("t00000/s00/0/other", data=np.zeros(3))
        ds = f.create_dataset("t00000/s00/0/cells", data=source, chunks=(4, 20, 16))
        ds.attrs["element_size_um"] = [2.0, 0.5, 0.5]
        ds.attrs["axes"] = "zyx"
    out = tmp_path / "bdv.zarr"
    import_image(
        h5,
        out,
        dataset="t00000/s00/0/cells",
        chunks=(4, 8, 8),
        shards=(4, 16, 16),
        levels=2,
        scheduler=scheduler,
    )
    check_image(
        out, source, "zyx", {"z": 2.0, "y": 0.5, "x": 0.5}, dict.fromkeys("zyx", "micrometer"), 2
    )
    assert zarr.open_array(str(out / "s0"), mode="r").shards == (4, 16, 16)


def test_tasks_cover_a_source_unit_once() -> None:
    """A TIFF page stored as one strip is decoded by one task: the task grows over y and x
    (whole chunks, so still one writer per chunk), within the task budget."""
    info = SourceInfo("p.tif", (100, 1000, 1500), "uint16", "zyx")
    (level,) = import_levels(info, (64, 256, 256), None, 1, "0.5")
    assert task_grid(level, (1, 1000, 1500), 2) == (64, 1024, 1536)
    assert task_grid(level, (1, 1, 1), 2) == (64, 256, 256)  # read exactly: chunks
    big = SourceInfo("p.tif", (100, 20000, 20000), "uint16", "zyx")
    (level,) = import_levels(big, (64, 256, 256), None, 1, "0.5")
    grid = task_grid(level, (1, 20000, 20000), 2)
    assert all(g % c == 0 for g, c in zip(grid, level.chunks))
    assert np.prod(grid) * 2 <= TASK_BUDGET_BYTES


def test_a_file_written_anew_is_opened_anew(tmp_path: Path) -> None:
    """Readers are kept per process; one for a file since rewritten is not reused."""
    from engine.io.sources import SourceSpec, open_source

    tif = tmp_path / "again.tif"
    spec = SourceSpec("tiff", str(tif), scale=(("y", 1.0), ("x", 1.0)), unit="um")
    tifffile.imwrite(tif, np.zeros((10, 10), np.uint8))
    assert open_source(spec).info.shape == (10, 10)
    tifffile.imwrite(tif, np.ones((12, 14), np.uint8))
    reader = open_source(spec)
    assert reader.info.shape == (12, 14)
    np.testing.assert_array_equal(reader.read((slice(0, 12), slice(0, 14))), 1)


def test_bioio_source_reads_boxes(tmp_path: Path) -> None:
    """A file bioio reads (here through its tifffile plugin): TCZYX boxes equal the data."""
    from engine.io.sources import SourceSpec, open_source

    source = data((2, 3, 20, 30), "uint16")
    tif = tmp_path / "bio.tif"
    tifffile.imwrite(tif, source, metadata={"axes": "CZYX"})
    spec = SourceSpec("bioio", str(tif), scale=(("z", 2.0), ("y", 0.5), ("x", 0.5)), unit="um")
    reader = open_source(spec)
    assert reader.info.axes == "tczyx" and reader.info.shape == (1, 2, 3, 20, 30)
    box = (slice(0, 1), slice(1, 2), slice(0, 3), slice(5, 17), slice(2, 29))
    np.testing.assert_array_equal(reader.read(box)[0], source[1:2, :, 5:17, 2:29])


# --- kill -9 and --resume -----------------------------------------------------------


def _executable() -> str:
    beside = Path(sys.executable).with_name("ngff-engine")
    found = str(beside) if beside.exists() else shutil.which("ngff-engine")
    assert found
    return found


def chunk_sums(image: Path) -> dict[str, str]:
    return {
        str(p.relative_to(image)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(image.rglob("*"))
        if p.is_file() and p.name not in ("zarr.json", ".zattrs", ".zarray", ".zgroup")
    }


def test_kill_and_resume_gives_the_same_bytes(tmp_path: Path, scheduler: str) -> None:
    source = data((32, 128, 128), "uint16")
    tif = tmp_path / "big.tif"
    tifffile.imwrite(tif, source, metadata={"axes": "ZYX"})
    options = ["--chunks", "4,16,16", "--levels", "2", "--scale", "z=1,y=1,x=1", "--unit", "um"]
    reference = tmp_path / "reference.zarr"
    assert (
        main(["import", str(tif), str(reference), "--scheduler", scheduler, "--quiet", *options])
        == 0
    )

    out = tmp_path / "killed.zarr"
    argv = [_executable(), "import", str(tif), str(out), "--workers", "2", "--quiet", *options]
    proc = subprocess.Popen(
        argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    started = time.monotonic()

    def marked() -> int:
        return sum(
            len(read_records(p).positions)
            for p in tmp_path.glob("killed.zarr.partial-*/_engine/runs/*/markers/import.s0")
        )

    while marked() < 40:
        assert proc.poll() is None, f"the import ended before the kill: {proc.stderr.read()}"
        assert time.monotonic() - started < 120
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing a reader could take for the finished image
    (partial,) = tmp_path.glob("killed.zarr.partial-*")
    before = marked()
    # without --resume: refused, naming the unfinished import
    assert main(["import", str(tif), str(out), "--scheduler", scheduler, "--quiet", *options]) == 2
    result = import_image(
        tif,
        out,
        chunks=(4, 16, 16),
        levels=2,
        scale="z=1,y=1,x=1",
        unit="um",
        resume=True,
        scheduler=scheduler,
    )
    assert result.resumed
    s0 = next(s for s in result.stages if s.name == "import/s0")
    assert s0.skipped >= before and s0.done == s0.tasks - s0.skipped
    assert not partial.exists()
    assert chunk_sums(out) == chunk_sums(reference)


def test_import_on_slurm(tmp_path: Path) -> None:
    """The same import with its workers as SLURM jobs (slurm/dev-cluster.sh), the same bytes."""
    started = subprocess.run(
        ["bash", str(TESTS.parent / "slurm" / "dev-cluster.sh"), "start"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert started.returncode == 0, started.stderr
    source = data((8, 32, 32), "uint16")
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, source, metadata={"axes": "ZYX"})
    options = ["--chunks", "4,16,16", "--levels", "2", "--scale", "z=1,y=1,x=1", "--unit", "um"]
    out = tmp_path / "slurm.zarr"
    argv = ["import", str(tif), str(out), "--quiet", *options, "--cluster", "slurm"]
    argv += ["--partition", "debug", "--jobs", "1", "--memory", "1GiB", "--walltime", "00:10:00"]
    assert main([*argv, "--shared-dir", str(tmp_path / "shared")]) == 0
    check_image(
        out, source, "zyx", dict.fromkeys("zyx", 1.0), dict.fromkeys("zyx", "micrometer"), 2
    )


def test_damaged_tile_found_by_a_worker(
    tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture
) -> None:
    """A tile that does not decode is found by the task reading it: one line naming the
    file, exit 2, no image at OUT, the unfinished import left for --resume/--overwrite."""
    tif = tmp_path / "damaged.tif"
    tifffile.imwrite(
        tif,
        data((4, 32, 32), "uint16"),
        tile=(16, 16),
        compression="zlib",
        metadata={"axes": "ZYX"},
    )
    with tifffile.TiffFile(tif) as f:
        page = f.series[0].pages[0]  # tifffile stores the tiles of all 4 planes in one page
        offset, size = page.dataoffsets[5], page.databytecounts[5]
    raw = bytearray(tif.read_bytes())
    raw[offset : offset + size] = b"\x00" * size
    tif.write_bytes(bytes(raw))
    out = tmp_path / "damaged.zarr"
    argv = ["import", str(tif), str(out), "--scheduler", scheduler, "--quiet"]
    assert main([*argv, "--scale", "z=1,y=1,x=1", "--unit", "um", "--chunks", "2,16,16"]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "damaged.tif: unreadable" in err and "--resume" in err
    assert not out.exists()
    assert len(list(tmp_path.glob("damaged.zarr.partial-*"))) == 1


# --- bad input: one line naming the file, exit 2, nothing left that looks finished ------


def refused(argv: list[str], capsys: pytest.CaptureFixture, *names: str) -> str:
    assert main(["import", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 or "\n" not in err.replace("\n", " ", 2), err
    for name in names:
        assert name in err.replace("\n", ""), err
    return err


def test_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = data((5, 16, 16), "uint16")
    scale = ["--scale", "z=1,y=1,x=1", "--unit", "um"]
    out = tmp_path / "out.zarr"

    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a TIFF at all")
    refused([str(junk), str(out), *scale], capsys, "junk.tif", "not a readable TIFF")

    truncated = tmp_path / "cut.tif"
    tifffile.imwrite(truncated, good, metadata={"axes": "ZYX"})
    truncated.write_bytes(truncated.read_bytes()[:1000])
    refused([str(truncated), str(out), *scale], capsys, "cut.tif", "truncated")

    refused([str(tmp_path / "missing.tif"), str(out)], capsys, "missing.tif")

    plain = tmp_path / "q.tif"
    tifffile.imwrite(plain, good, rowsperstrip=4, compression="zlib")  # axes 'QYX'
    refused([str(plain), str(out), *scale], capsys, "q.tif", "--axes")
    refused([str(plain), str(out), "--axes", "zyx"], capsys, "q.tif", "--scale")

    folder = tmp_path / "planes"
    folder.mkdir()
    for z in range(4):
        tifffile.imwrite(folder / f"z{z}.tif", good[z])
    tifffile.imwrite(folder / "z3.tif", good[0, :8])
    refused([str(folder), str(out), *scale], capsys, "z3.tif", "shape")
    tifffile.imwrite(folder / "z3.tif", good[0].astype(np.float32))
    refused([str(folder), str(out), *scale], capsys, "z3.tif", "dtype")
    tifffile.imwrite(folder / "z3.tif", good[3])
    (folder / "z3.tif").write_bytes((folder / "z3.tif").read_bytes()[:300])
    refused([str(folder), str(out), *scale], capsys, "z3.tif", "truncated")
    (folder / "z3.tif").unlink()
    refused(
        [str(folder), str(out), "--pattern", "t{t}_z{z}.tif", *scale], capsys, "no file matches"
    )
    refused([str(folder), str(out), "--pattern", "z{z}.tif", "--scale", "y=1"], capsys, "z")

    h5 = tmp_path / "two.h5"
    with h5py.File(h5, "w") as f:
        f["a"], f["b"] = good, good
    refused([str(h5), str(out), *scale], capsys, "two.h5", "--dataset")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(h5.read_bytes()[:700])
    refused([str(cut), str(out), *scale, "--dataset", "a"], capsys, "cut.h5", "HDF5")

    existing = tmp_path / "exists.zarr"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    tif = tmp_path / "ok.tif"
    tifffile.imwrite(tif, good, metadata={"axes": "ZYX"})
    refused([str(tif), str(existing), *scale], capsys, "exists.zarr", "--overwrite")
    assert (existing / "keep.txt").read_text() == "mine"

    refused([str(tif), str(out), *scale, "--chunks", "4,16"], capsys, "--chunks")
    refused([str(tif), str(out), *scale, "--shards", "4,16,16", "--ngff", "0.4"], capsys, "0.5")

    assert not out.exists()
    assert not list(tmp_path.glob("*.partial-*"))
