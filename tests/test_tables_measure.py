"""Measurement tables: equal to skimage's regionprops_table on the whole array, for every
object, whatever the chunking and ROI; AnnData on zarr in the Fractal/ngio convention."""

from __future__ import annotations

import csv
import json

import anndata
import numpy as np
import pytest
import zarr
from conftest import blobs, read_table, same_partition, write_image
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.measure import regionprops_table

from engine import Pipeline, run
from engine.cli.commands import main
from engine.core.errors import ConfigError, OutputConflict
from tasks.measure import combine_partials, measure_block, table_columns

PROPS = ("label", "area", "centroid", "bbox", "intensity_mean", "intensity_min", "intensity_max")


def pipeline(intensity: str | None = "image", **measure) -> Pipeline:
    params = {} if intensity is None else {"intensity": intensity}
    return (
        Pipeline()
        .add("g1", "gaussian", sigma=1.0)
        .add("mask", "threshold", "g1", method="percentile", percentile=85)
        .add("nuclei", "label", "mask", {"kind": "label", "name": "nuclei"})
        .add("stats", "measure", "nuclei", {"kind": "table", "name": "stats"}, **params, **measure)
    )


def assert_matches_regionprops(
    table: anndata.AnnData,
    labels: np.ndarray,
    intensity: np.ndarray | None,
    start: tuple[int, ...],
    scale: tuple[float, ...],
    exact_intensity: bool = True,
) -> None:
    """Every object and every regionprops column; pixel coordinates are the image's,
    so the ROI's start is added to regionprops' (computed on the ROI crop)."""
    props = PROPS if intensity is not None else PROPS[:4]
    ref = regionprops_table(labels, intensity, properties=props)
    columns = list(table.var_names)
    got = {c: np.asarray(table.X[:, i]) for i, c in enumerate(columns)}
    np.testing.assert_array_equal(table.obs_names.astype(np.int64), ref["label"])
    ndim = labels.ndim
    for key, want in ref.items():
        if key == "label":
            continue
        want = np.asarray(want, dtype=np.float64)
        axis = int(key.split("-")[1]) % ndim if "-" in key else None
        if axis is not None:
            want = want + start[axis]
        if key.startswith("intensity") and not exact_intensity:
            np.testing.assert_allclose(got[key], want, rtol=1e-6, err_msg=key)
        elif key.startswith("centroid") and any(start):
            # the engine's mean of image coordinates vs regionprops' mean of ROI
            # coordinates plus the ROI start: one rounding apart
            np.testing.assert_allclose(got[key], want, rtol=0, atol=1e-12, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], want, err_msg=key)
    np.testing.assert_array_equal(got["volume"], ref["area"] * np.prod(scale))
    for i in range(ndim):
        np.testing.assert_allclose(
            got[f"centroid_physical-{i}"], (ref[f"centroid-{i}"] + start[i]) * scale[i]
        )
    if intensity is not None:
        sums = ndimage.sum_labels(intensity.astype(np.float64), labels, ref["label"])
        np.testing.assert_allclose(got["intensity_sum"], sums, rtol=1e-9)


CASES = [
    # shape, chunks, roi, version, scale
    (
        (30, 60, 70),
        (30, 60, 70),
        {"z": (3, 27), "y": (5, 55), "x": (1, 69)},
        "0.5",
        (2.0, 0.5, 0.5),
    ),
    ((30, 60, 70), (8, 16, 16), {"z": (3, 27), "y": (5, 55), "x": (1, 69)}, "0.4", (2.0, 0.5, 0.5)),
    ((30, 60, 70), (7, 13, 23), None, "0.5", (1.0, 1.0, 1.0)),
    ((120, 150), (32, 32), {"y": (7, 113), "x": (3, 141)}, "0.4", (0.25, 0.5)),
    ((120, 150), (17, 41), None, "0.5", (1.0, 1.0)),
]


@pytest.mark.parametrize(("shape", "chunks", "roi", "version", "scale"), CASES)
def test_table_equals_regionprops_on_the_whole(
    tmp_path, scheduler, shape, chunks, roi, version, scale
):
    img = blobs(shape, seed=sum(chunks), sigma=1.5)
    path = write_image(tmp_path / "img.zarr", img, chunks, version, scale=scale)
    names = ("z", "y", "x")[-len(shape) :]
    window = tuple(
        slice(*roi[n]) if roi and n in roi else slice(0, s) for n, s in zip(names, shape)
    )
    result = run(pipeline(), input=path, roi=roi, scheduler=scheduler)

    root = zarr.open_group(str(path), mode="r")
    labels = root["labels/nuclei/s0"][...][window]
    g1 = ndimage.gaussian_filter(img.astype(np.float32), 1.0)[window]
    ref, count = ndimage.label(g1 > np.percentile(g1, 85))
    assert same_partition(labels, ref) and count > 5
    table = read_table(path, "stats")
    assert table.n_obs == count == result.labels["nuclei"]
    start = tuple(s.start for s in window)
    assert_matches_regionprops(table, labels, img[window], start, scale)
    assert result.outputs["stats"].endswith("tables/stats")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_table_layout_follows_the_fractal_ngio_convention(tmp_path, scheduler, version):
    img = blobs((16, 40, 50), seed=2, sigma=1.5)
    path = write_image(tmp_path / "img.zarr", img, (8, 16, 16), version)
    run(pipeline(), input=path, scheduler=scheduler)

    metadata = "zarr.json" if version == "0.5" else ".zattrs"
    assert (path / "tables" / "stats" / metadata).exists()
    root = zarr.open_group(str(path), mode="r")
    assert root["tables"].attrs["tables"] == ["stats"]
    attrs = root["tables/stats"].attrs.asdict()
    assert attrs["type"] == "feature_table"
    assert attrs["fractal_table_version"] == "1"
    assert attrs["region"] == {"path": "../labels/nuclei"}
    assert attrs["instance_key"] == "label"
    assert attrs["encoding-type"] == "anndata"
    record = attrs["ngff_engine"]
    assert [s["name"] for s in record["provenance"]["chain"]] == ["g1", "mask", "nuclei", "stats"]
    assert len(record["config_hash"]) == 16 and len(record["runs"]) == 1
    assert record["units"]["volume"] == "micrometer^3"

    table = read_table(path, "stats")
    assert table.obs_names.name == "label"
    assert table.X.dtype == np.float64
    assert list(table.var_names[:4]) == ["area", "centroid-0", "centroid-1", "centroid-2"]
    assert {"intensity_mean", "intensity_sum", "volume", "centroid_physical-2"} <= set(
        table.var_names
    )
    assert not (path / "tables" / "_writing-stats").exists()


def test_csv_export_and_re_runs(tmp_path, scheduler, cli):
    img = blobs((16, 40, 50), seed=4, sigma=1.5)
    path = write_image(tmp_path / "img.zarr", img, (8, 16, 16), "0.5")
    run(pipeline(), input=path, scheduler=scheduler)
    out = tmp_path / "stats.csv"
    assert main(["table", str(path), "stats", "--csv", str(out)]) == 0
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    table = read_table(path, "stats")
    assert list(rows[0]) == ["label", *table.var_names]
    assert [r["label"] for r in rows] == list(table.obs_names)
    assert (
        float(rows[0]["intensity_mean"])
        == table.X[0, list(table.var_names).index("intensity_mean")]
    )
    ran = cli(["table", str(path), "nope", "--csv", str(out)])
    assert ran.code == 2
    assert "no such table (tables: stats)" in ran.err

    # another config for the same table is refused, --overwrite replaces it
    with pytest.raises(OutputConflict, match="tables/stats exists with a different step config"):
        run(pipeline(intensity=None), input=path, scheduler=scheduler, update=True)
    run(pipeline(intensity=None), input=path, scheduler=scheduler, overwrite=True)
    assert "intensity_mean" not in read_table(path, "stats").var_names
    root = zarr.open_group(str(path), mode="r")
    assert root["tables"].attrs["tables"] == ["stats"]
    assert json.loads(json.dumps(root["tables/stats"].attrs["ngff_engine"]))["runs"]


def test_update_adds_the_rows_of_a_second_roi(tmp_path, scheduler):
    img = blobs((16, 50, 60), seed=6, sigma=1.5)
    path = write_image(tmp_path / "img.zarr", img, (8, 16, 16), "0.4")
    left = {"y": (0, 25), "x": (0, 30)}
    right = {"y": (25, 50), "x": (30, 60)}
    run(pipeline(), input=path, roi=left, scheduler=scheduler)
    first = read_table(path, "stats")
    run(pipeline(), input=path, roi=right, scheduler=scheduler, update=True)
    table = read_table(path, "stats")
    labels = zarr.open_group(str(path), mode="r")["labels/nuclei/s0"][...]
    assert table.n_obs == len(np.unique(labels)) - 1 > first.n_obs
    np.testing.assert_array_equal(table[first.obs_names].X, first.X)
    assert_matches_regionprops(table, labels, img, (0, 0, 0), (1.0, 1.0, 1.0))
    record = zarr.open_group(str(path), mode="r")["tables/stats"].attrs["ngff_engine"]
    assert len(record["runs"]) == 2


def test_intensity_from_a_step_and_from_a_channel(tmp_path, scheduler):
    # a c axis: the channel is chosen by params.channel; a step: its chain per chunk
    img = np.stack([blobs((60, 80), seed=1, sigma=1.5), blobs((60, 80), seed=9)])
    path = write_image(tmp_path / "img.zarr", img, (1, 16, 32), "0.5", names=("c", "y", "x"))
    p = pipeline(channel=1).add(
        "by_smooth", "measure", "nuclei", {"kind": "table", "name": "smooth"}, intensity="g1"
    )
    run(p, input=path, scheduler=scheduler)
    labels = zarr.open_group(str(path), mode="r")["labels/nuclei/s0"][...]
    assert_matches_regionprops(read_table(path, "stats"), labels, img[1], (0, 0), (1.0, 1.0))
    g1 = ndimage.gaussian_filter(img[0].astype(np.float32), 1.0)
    # float32 intensities: scikit-image sums them in float32, the engine in float64
    smooth = read_table(path, "smooth")
    assert_matches_regionprops(smooth, labels, g1, (0, 0), (1.0, 1.0), exact_intensity=False)


def test_config_errors_name_the_step(tmp_path):
    img = blobs((10, 20, 20), seed=1)
    path = write_image(tmp_path / "img.zarr", img, (5, 10, 10), "0.5")
    bad = [
        (
            Pipeline()
            .add("mask", "threshold", method="value", value=1)
            .add("stats", "measure", "mask", {"kind": "table", "name": "t"}),
            "input 'mask' must be a step that writes a label output",
        ),
        (
            pipeline().add("more", "gaussian", "stats", {"kind": "image", "name": "m"}, sigma=1),
            "step 'more': input 'stats' is a table",
        ),
        (
            Pipeline().add("g", "gaussian", output={"kind": "table", "name": "t"}, sigma=1),
            "step 'g': output kind 'table' is made by ops 'measure' and 'evaluate' only",
        ),
        (pipeline(channel=3), "step .stats.: params.channel is set but the image has no c axis"),
    ]
    for p, message in bad:
        with pytest.raises(ConfigError, match=message):
            run(p, input=path, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ConfigError, match="step 'stats': params.intensity 'nothing' is no step"):
        pipeline(intensity="nothing")


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 2**31),
    st.sampled_from([(23, 31), (9, 14, 17)]),
    st.integers(2, 9),
)
def test_partials_combine_exactly_over_any_blocks(seed, shape, step):
    rng = np.random.default_rng(seed)
    labels, _ = ndimage.label(ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5)
    intensity = rng.integers(0, 60000, shape).astype(np.uint16)
    if labels.max() == 0:
        return
    parts = []
    for corner in np.ndindex(*(-(-s // step) for s in shape)):
        box = tuple(slice(c * step, (c + 1) * step) for c in corner)
        parts.append(measure_block(labels[box], intensity[box], [c * step for c in corner]))
    rng.shuffle(parts)
    ids, columns, values = table_columns(
        combine_partials(parts), (1.0,) * len(shape), (5.0,) * len(shape)
    )
    ref = regionprops_table(labels, intensity, properties=PROPS)
    np.testing.assert_array_equal(ids, ref["label"])
    for key, want in ref.items():
        if key != "label":
            np.testing.assert_array_equal(values[:, columns.index(key)], want, err_msg=key)
    np.testing.assert_array_equal(
        values[:, columns.index("centroid_physical-0")], ref["centroid-0"] + 5.0
    )


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**31),
    st.sampled_from([(1,), (7,), (5, 1), (1, 9), (6, 11), (4, 5, 3), (3, 4, 1)]),
    st.sampled_from([np.uint16, np.float32, np.bool_]),
)
def test_block_partials_equal_a_per_label_count(seed, shape, dtype):
    """Every label's partial row against numpy on that label's voxels alone, for rows of
    one voxel, labels that run into the next row, and float and bool intensities."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, shape).astype(np.uint32) * 7
    intensity = (rng.random(shape) * 1000).astype(dtype)
    offset = [int(v) for v in rng.integers(0, 100, len(shape))]
    part = measure_block(labels, intensity, offset)
    ids = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(part["label"], ids)
    values = intensity.astype(np.uint8) if dtype == np.bool_ else intensity
    for row, label in enumerate(ids):
        coords = np.argwhere(labels == label) + offset
        mine = values[labels == label]
        assert part["count"][row] == len(coords)
        np.testing.assert_array_equal(part["sum"][row], coords.sum(axis=0))
        np.testing.assert_array_equal(part["min"][row], coords.min(axis=0))
        np.testing.assert_array_equal(part["max"][row], coords.max(axis=0))
        np.testing.assert_allclose(part["isum"][row], mine.astype(np.float64).sum(), rtol=1e-12)
        assert part["imin"][row] == mine.min() and part["imax"][row] == mine.max()


def _tree(root) -> dict[str, object]:
    """Every file under `root`: metadata documents parsed, chunks as bytes."""
    found: dict[str, object] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        metadata = path.name in ("zarr.json", ".zarray", ".zattrs", ".zgroup")
        found[str(path.relative_to(root))] = json.loads(data) if metadata else data
    return found


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_tables_are_written_as_anndata_writes_them(tmp_path, zarr_format):
    """The engine writes feature tables without importing anndata (0.65 s of every run
    that writes one: engine/io/anndata_zarr.py); what it writes is what anndata writes
    for the same table, byte for byte, in the image's zarr format, and anndata reads
    it back (ngio's reading: tests/test_ngio_interop.py)."""
    import pandas as pd
    from anndata.io import write_elem

    from engine.io.tables import table_attrs, write_table

    rng = np.random.default_rng(0)
    ids, columns = np.array([3, 1, 7, 12]), ["area", "centroid-0", "intensity_mean"]
    values = rng.random((len(ids), len(columns)))
    ours = zarr.open_group(tmp_path / "ours.zarr", mode="w", zarr_format=zarr_format)
    write_table(ours, "stats", ids, columns, values, table_attrs("nuclei"))
    theirs = zarr.open_group(tmp_path / "theirs.zarr", mode="w", zarr_format=zarr_format)
    obs = pd.DataFrame(index=pd.Index([str(i) for i in ids], name="label"))
    data = anndata.AnnData(X=values, obs=obs, var=pd.DataFrame(index=pd.Index(columns)))
    # anndata's own defaults: ngio sets its global zarr_write_format and, for zarr v3,
    # auto_shard_zarr_v3 when it writes tables, as other tests in this process make it do
    with anndata.settings.override(zarr_write_format=zarr_format, auto_shard_zarr_v3=False):
        write_elem(theirs.require_group("tables"), "stats", data)
    theirs["tables/stats"].attrs.update(table_attrs("nuclei"))
    theirs["tables"].attrs.update({"tables": ["stats"]})
    assert _tree(tmp_path / "ours.zarr") == _tree(tmp_path / "theirs.zarr")
    back = anndata.read_zarr(tmp_path / "ours.zarr" / "tables" / "stats")
    assert list(back.obs_names) == ["3", "1", "7", "12"] and back.obs.index.name == "label"
    assert list(back.var_names) == columns and np.array_equal(back.X, values)


def test_a_killed_table_write_is_replaced_by_the_next(tmp_path):
    """A run killed while writing a table leaves `tables/_writing-<name>`; the next write
    of that table starts afresh instead of failing on it."""
    from engine.io.tables import table_attrs, write_table

    root = zarr.open_group(tmp_path / "i.zarr", mode="w")
    root.require_group("tables").create_group("_writing-stats").create_array(
        "X", shape=(1,), dtype="u1"
    )
    write_table(
        root, "stats", np.array([1, 2]), ["area"], np.array([[4.0], [5.0]]), table_attrs("n")
    )
    assert sorted(p.name for p in (tmp_path / "i.zarr" / "tables").iterdir()) == [
        "stats",
        "zarr.json",
    ]
    assert anndata.read_zarr(tmp_path / "i.zarr" / "tables" / "stats").X.tolist() == [[4.0], [5.0]]
