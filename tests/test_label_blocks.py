"""Small ROIs label in whole blocks (engine/plan/stitching.py): one block in all writes
final ids straight into the output (no faces, merge, relabel); one block per time point
has no faces stage. Labels equal scipy's as a partition, ids consecutive, the run's
result, record and tables as the per-chunk stitching gives them; --update continues
after the ids already there; a failed run resumes without labelling again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import blobs, read_table, same_partition, write_image
from scipy import ndimage
from test_tables_measure import assert_matches_regionprops

from engine import Pipeline, run
from engine.cli.commands import main
from engine.execute.executor import TaskFailed
from engine.runs.planning import make_plan
from engine.state.records import read_record

BLOCKS_ENV = "NGFF_ENGINE_LABEL_BLOCK_VOXELS"
THRESHOLD = 2100  # blobs() spans about 100..4100


def labelling(connectivity: int = 1, measure: bool = False) -> Pipeline:
    """threshold (no halo) -> label -> optionally measure: the label chain reads the image."""
    p = (
        Pipeline()
        .add("mask", "threshold", method="value", value=THRESHOLD)
        .add("cc", "label", "mask", {"kind": "label", "name": "cc"}, connectivity=connectivity)
    )
    if measure:
        p = p.add("stats", "measure", "cc", {"kind": "table", "name": "stats"}, intensity="image")
    return p


def kinds(path: Path, pipeline: Pipeline, roi: dict | None) -> list[tuple[str, str]]:
    _, plan = make_plan(pipeline, path, roi)
    return [(s.name, s.kind) for s in plan.stages if s.step == "cc"]


def oracle(frame: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    structure = ndimage.generate_binary_structure(frame.ndim, connectivity)
    return ndimage.label(frame > THRESHOLD, structure)


def check_labels(got: np.ndarray, img: np.ndarray, window, connectivity, timed) -> int:
    """Per time point (or the whole ROI) the oracle's partition inside the window, zero
    outside, ids unique across time points and consecutive 1..n; returns n."""
    outside = np.ones(got.shape, bool)
    outside[window] = False
    assert not got[outside].any(), "labels outside the ROI"
    inside, ref_img = got[window], img[window]
    frames = list(zip(inside, ref_img, strict=True)) if timed else [(inside, ref_img)]
    total, seen = 0, set()
    for labels, frame in frames:
        ref, n = oracle(frame, connectivity)
        assert same_partition(labels, ref)
        ids = set(np.unique(labels).tolist()) - {0}
        assert len(ids) == n and not ids & seen
        seen |= ids
        total += n
    assert seen == set(range(1, total + 1)), "ids are not 1..n"
    return total


ONE_BLOCK = [
    # (shape, chunks, names, roi, connectivity)
    ((30, 50, 60), (8, 16, 16), "zyx", {"z": (3, 27), "y": (5, 47), "x": (2, 59)}, 1),
    ((30, 50, 60), (30, 50, 60), "zyx", None, 3),
    ((30, 50, 60), (7, 19, 23), "zyx", {"z": (0, 30), "y": (1, 50), "x": (2, 59)}, 2),
    ((70, 90), (16, 32), "yx", {"y": (7, 65), "x": (11, 80)}, 2),
    ((3, 10, 40, 40), (1, 5, 16, 16), "tzyx", {"t": (1, 2), "y": (3, 37)}, 1),
]


@pytest.mark.parametrize(("shape", "chunks", "names", "roi", "connectivity"), ONE_BLOCK)
def test_one_block_writes_final_ids_as_stitching_does(
    tmp_path, scheduler, monkeypatch, shape, chunks, names, roi, connectivity
):
    img = blobs(shape, seed=sum(shape))
    path = write_image(tmp_path / "img.zarr", img, chunks, names=tuple(names))
    pipeline = labelling(connectivity)
    assert kinds(path, pipeline, roi) == [
        ("cc/label", "label-block"),
        ("cc/pyramid-1", "pyramid"),
    ]
    result = run(pipeline, input=path, roi=roi, scheduler=scheduler)
    root = zarr.open_group(str(path), mode="r")
    got = root["labels/cc/s0"][...]
    assert got.dtype == np.uint32
    window = tuple(
        slice(*roi[n]) if roi and n in roi else slice(0, s) for n, s in zip(names, shape)
    )
    n = check_labels(got, img, window, connectivity, timed="t" in names)
    assert result.labels == {"cc": n}
    np.testing.assert_array_equal(root["labels/cc/s1"][...], got[..., ::2, ::2])
    record = read_record(str(path), result.run_id)
    assert record["stages"]["cc/label"]["tasks"] == 1
    assert root["labels/cc"].attrs["ngff_engine"]["max_label"] == n

    # the same run stitched per chunk: the same objects, count, result and record fields
    other = tmp_path / "per-chunk.zarr"
    write_image(other, img, chunks, names=tuple(names))
    monkeypatch.setenv(BLOCKS_ENV, "0")
    assert ("cc/merge", "merge") in kinds(other, pipeline, roi)
    stitched = run(pipeline, input=other, roi=roi, scheduler=scheduler)
    again = zarr.open_array(str(other / "labels/cc/s0"))[...]
    assert same_partition(again, got)
    assert stitched.labels == result.labels
    assert set(stitched.merge["cc"]) == set(result.merge["cc"])
    assert result.merge["cc"]["objects"] == n
    before = read_record(str(other), stitched.run_id)
    assert {k for k in record if k != "stages"} == {k for k in before if k != "stages"}


TIME_BLOCKS = [
    # (shape, chunks, roi, label tasks): one block per time chunk
    ((4, 10, 40, 40), (1, 5, 16, 16), None, 4),
    ((4, 10, 40, 40), (2, 5, 16, 16), {"t": (1, 4), "z": (2, 9), "x": (5, 33)}, 2),
]


@pytest.mark.parametrize(("shape", "chunks", "roi", "tasks"), TIME_BLOCKS)
def test_time_points_label_in_blocks_without_faces(tmp_path, scheduler, shape, chunks, roi, tasks):
    img = blobs(shape, seed=7)
    path = write_image(tmp_path / "img.zarr", img, chunks, names=("t", "z", "y", "x"))
    pipeline = labelling()
    _, plan = make_plan(pipeline, path, roi)
    assert [(s.name, s.kind, len(s.tasks)) for s in plan.stages if s.step == "cc"][:3] == [
        ("cc/label", "label", tasks),
        ("cc/merge", "merge", 0),
        ("cc/relabel", "relabel", tasks),
    ]
    result = run(pipeline, input=path, roi=roi, scheduler=scheduler)
    got = zarr.open_array(str(path / "labels/cc/s0"))[...]
    window = tuple(
        slice(*roi[n]) if roi and n in roi else slice(0, s) for n, s in zip("tzyx", shape)
    )
    n = check_labels(got, img, window, 1, timed=True)
    assert result.labels == {"cc": n}
    # no scratch array pairs faces: none was made
    assert not list(path.glob("_engine/runs/*/cc/local-faces-*"))


def test_update_continues_after_the_ids_already_there(tmp_path, scheduler):
    img = blobs((20, 60, 70), seed=5)
    path = write_image(tmp_path / "img.zarr", img, (10, 16, 16))
    config = tmp_path / "p.yaml"
    config.write_text(
        "rois:\n"
        "  left: {units: pixel, z: [0, 20], y: [0, 40], x: [0, 30]}\n"
        "  right: {units: pixel, z: [0, 20], y: [10, 60], x: [25, 70]}\n"
        "steps:\n"
        f"  - {{name: mask, op: threshold, params: {{method: value, value: {THRESHOLD}}}}}\n"
        "  - {name: cc, op: label, input: mask, output: {kind: label, name: cc}}\n"
    )
    pipeline = Pipeline.from_yaml(config)
    assert kinds(path, pipeline, "right")[0] == ("cc/label", "label-block")

    def run_cli(*extra: str) -> int:
        argv = ["run", str(config), "--input", str(path), "--scheduler", scheduler, "--quiet"]
        return main([*argv, *extra])

    assert run_cli("--roi", "left") == 0
    root = zarr.open_group(str(path), mode="r")
    first = root["labels/cc/s0"][...]
    first_max = int(first.max())
    assert first_max > 0
    assert run_cli("--roi", "right", "--update") == 0
    labels = root["labels/cc/s0"][...]
    left = np.s_[0:20, 0:40, 0:25]  # the part of left that right leaves
    right = np.s_[0:20, 10:60, 25:70]
    np.testing.assert_array_equal(labels[left], first[left])
    ref, n = oracle(img[right], 1)
    assert same_partition(labels[right], ref)
    ids = np.unique(labels[right])[1:]
    np.testing.assert_array_equal(ids, np.arange(first_max + 1, first_max + n + 1))
    record = root["labels/cc"].attrs["ngff_engine"]
    assert record["max_label"] == int(labels.max()) == first_max + n


def test_measure_table_equals_regionprops_of_the_block(tmp_path, scheduler):
    img = blobs((24, 48, 56), seed=11)
    path = write_image(tmp_path / "img.zarr", img, (8, 16, 16))
    roi = {"z": (2, 22), "y": (3, 45), "x": (4, 50)}
    pipeline = labelling(measure=True)
    assert kinds(path, pipeline, roi)[0] == ("cc/label", "label-block")
    run(pipeline, input=path, roi=roi, scheduler=scheduler)
    window = np.s_[2:22, 3:45, 4:50]
    labels = zarr.open_array(str(path / "labels/cc/s0"))[...][window]
    table = read_table(path, "stats")
    assert_matches_regionprops(table, labels, img[window], (2, 3, 4), (1.0, 1.0, 1.0))


def test_failed_run_resumes_without_labelling_again(tmp_path, scheduler):
    """The label block is marked done with its count; a run that fails after it (a step
    reading the labels fails on the chunk holding id 1) resumes with the same ids, count
    and offset, without labelling again."""
    img = blobs((16, 64, 64), seed=9)
    image = write_image(tmp_path / "image.zarr", img, (8, 32, 32))
    fixed = tmp_path / "fixed"
    kwargs = {"value": 1, "unless": str(fixed)}
    custom = {
        "name": "custom",
        "op": "function",
        "input": "cc",
        "params": {"function": "user.ops:fail_on_value", "kwargs": kwargs},
        "output": {"kind": "image", "name": "custom"},
    }
    pipeline = Pipeline.build({"steps": [*labelling().to_dict()["steps"], custom]})
    _, plan = make_plan(pipeline, image, None)
    assert [s.name for s in plan.stages][:2] == ["cc/label", "cc/pyramid-1"]
    clean = tmp_path / "clean.zarr"
    shutil.copytree(image, clean)
    fixed.touch()
    want = run(pipeline, input=clean, scheduler=scheduler)
    fixed.unlink()

    with pytest.raises(TaskFailed, match="bad voxel value 1"):
        run(pipeline, input=image, scheduler=scheduler)
    fixed.touch()
    result = run(pipeline, input=image, scheduler=scheduler, resume=True)
    record = read_record(str(image), result.run_id)
    assert record["stages"]["cc/label"]["skipped"] == 1
    assert record["stages"]["cc/label"]["done"] == 0
    assert result.labels == want.labels
    for level in ("s0", "s1"):
        np.testing.assert_array_equal(
            zarr.open_array(str(image / "labels/cc" / level))[...],
            zarr.open_array(str(clean / "labels/cc" / level))[...],
        )
    assert check_labels(zarr.open_array(str(image / "labels/cc/s0"))[...], img, (), 1, False)


def test_instance_in_one_chunk_writes_final_ids(tmp_path, scheduler, monkeypatch):
    """An instance step on an ROI inside one chunk: one segment-block task writes the ids
    the four stages would (no border to match: the same ids, not just the same objects)."""
    from test_labels_instance import instance_pipeline, spheres

    mask, _ = spheres((16, 40, 40), 5, 4, 1.6, seed=2)
    roi = {"z": (1, 15), "y": (2, 38), "x": (3, 37)}
    pipeline = instance_pipeline(overlap=4)
    results, arrays = [], []
    for blocks in ("", "0"):
        monkeypatch.setenv(BLOCKS_ENV, blocks)
        path = write_image(tmp_path / f"m{blocks}.zarr", mask, (16, 40, 40))
        _, plan = make_plan(pipeline, path, roi)
        stages = [s.kind for s in plan.stages if s.step == "nuc"]
        assert stages[0] == ("segment" if blocks else "segment-block")
        assert ("merge" in stages) == bool(blocks)
        results.append(run(pipeline, input=path, roi=roi, scheduler=scheduler))
        arrays.append([zarr.open_array(str(path / f"labels/nuc/s{k}"))[...] for k in (0, 1)])
    assert results[0].labels == results[1].labels and results[0].labels["nuc"] >= 3
    for block, chunked in zip(*arrays, strict=True):
        np.testing.assert_array_equal(block, chunked)


def test_what_stays_per_chunk(tmp_path, monkeypatch):
    """A chain with a halo (a filter before the label) keeps a task per chunk: one block
    would run the filter on one core; a ROI over the budget keeps them too."""
    path = write_image(tmp_path / "img.zarr", blobs((20, 48, 48), seed=3), (10, 16, 16))
    smoothed = (
        Pipeline()
        .add("g", "gaussian", sigma=1.0)
        .add("mask", "threshold", "g", method="value", value=THRESHOLD)
        .add("cc", "label", "mask", {"kind": "label", "name": "cc"})
    )
    assert [k for _, k in kinds(path, smoothed, None)][:4] == ["label", "faces", "merge", "relabel"]
    assert kinds(path, labelling(), None)[0] == ("cc/label", "label-block")
    monkeypatch.setenv(BLOCKS_ENV, str(20 * 48 * 48 - 1))
    assert [k for _, k in kinds(path, labelling(), None)][:2] == ["label", "faces"]
    monkeypatch.setenv(BLOCKS_ENV, str(20 * 48 * 48))
    assert kinds(path, labelling(), None)[0] == ("cc/label", "label-block")


def test_plan_shows_the_block_task_memory(tmp_path, monkeypatch, capsys):
    path = write_image(tmp_path / "img.zarr", blobs((20, 64, 64), seed=4), (10, 32, 32))
    config = tmp_path / "p.yaml"
    config.write_text(labelling().to_yaml())

    def task_bytes() -> tuple[dict[str, int], int]:
        assert main(["plan", str(config), "--input", str(path), "--json", "--no-warm"]) == 0
        data = json.loads(capsys.readouterr().out)
        return {r["stage"]: r["task_bytes"] for r in data["stages"]}, data["projected_worker_bytes"]

    block, block_worker = task_bytes()
    voxels = 20 * 64 * 64
    # the whole frame's input (uint16), mask, labels and the ids written
    assert block["cc/label"] >= voxels * (2 + 1 + 4 + 4)
    monkeypatch.setenv(BLOCKS_ENV, "0")
    chunked, chunk_worker = task_bytes()
    assert block["cc/label"] >= 8 * chunked["cc/label"]  # 8 chunks' worth
    assert block_worker > chunk_worker
    assert main(["plan", str(config), "--input", str(path), "--no-warm"]) == 0
    assert "task memory" in capsys.readouterr().out
    monkeypatch.setenv(BLOCKS_ENV, "many")
    assert main(["plan", str(config), "--input", str(path), "--no-warm"]) == 2
    err = capsys.readouterr().err
    assert f"{BLOCKS_ENV}: 'many' is not a number of voxels" in err and "Traceback" not in err
