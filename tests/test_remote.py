"""Images where they live: OME-Zarr read over HTTP and S3, outputs written to S3 or to a
separate output store, against real servers on 127.0.0.1 (tests/servers.py): Python's
http.server and moto's standalone S3 server.

Every run's labels are compared with the same run on a local copy of the image, and
outputs are read back with independent readers (ome-zarr-py, ome-zarr-models, anndata).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from engine import Pipeline, run
from engine.cli.commands import main
from engine.io.location import Location
from engine.io.sample_zarr import write_sample
from engine.io.tables import read_table

TESTS = Path(__file__).parent
MEASURE = TESTS.parent / "configs" / "nuclei-measure.yaml"
STANDARD = TESTS.parent / "configs" / "nuclei.yaml"
SHAPE, CHUNKS = (32, 128, 128), (16, 64, 64)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def s3_tree(s3, prefix: str) -> dict[str, str]:
    fs = s3.filesystem()
    return {p: fs.info(p)["ETag"] for p in fs.find(prefix)}


def labels(where: str | Path, storage_options: dict | None = None) -> np.ndarray:
    loc = Location.parse(where, storage_options).child("labels/nuclei/s0")
    return np.asarray(zarr.open_array(loc.zarr_url(), mode="r")[...])


def same_partition(a: np.ndarray, b: np.ndarray) -> None:
    """Equal, the engine's ids being deterministic for one chunking."""
    assert a.shape == b.shape
    assert a.max() > 10
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(write_sample(tmp_path_factory.mktemp("remote") / "sample.zarr", SHAPE, CHUNKS))


@pytest.fixture(scope="module")
def local_run(sample: Path, scheduler: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The measure pipeline on a local copy: the reference."""
    image = tmp_path_factory.mktemp("local") / "image.zarr"
    shutil.copytree(sample, image)
    run(Pipeline.from_yaml(MEASURE), input=image, scheduler=scheduler)
    return image


@pytest.fixture(scope="module")
def http_image(sample: Path, served) -> str:
    shutil.copytree(sample, served.root / "sample.zarr")
    return served.url_of("sample.zarr")


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- info ---------------------------------------------------------------------------------


def test_info_over_http(http_image: str, capsys: pytest.CaptureFixture) -> None:
    code, out, err = cli(capsys, "info", http_image, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["image"]["path"] == http_image
    assert [lv["shape"] for lv in info["image"]["levels"]][0] == list(SHAPE)
    assert {item["name"] for item in info["labels"]} == {"truth", "annotations"}
    assert {r["name"] for r in info["rois"]} == {"train", "test"}


def test_info_over_s3_with_credentials_from_the_environment(
    sample: Path, s3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    url = s3.upload(sample, "info", "sample.zarr")
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    code, out, err = cli(capsys, "info", url, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["image"]["path"] == url
    assert info["image"]["levels"][0]["chunks"] == list(CHUNKS)


# -- runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_store(
    http_image: str, scheduler: str, tmp_path_factory: pytest.TempPathFactory, served
) -> tuple[Path, object]:
    """The measure pipeline on the HTTP image, outputs into a separate local store; the
    served folder is checked untouched."""
    before = tree(served.root)
    store = tmp_path_factory.mktemp("store") / "outputs.zarr"
    result = run(Pipeline.from_yaml(MEASURE), input=http_image, output=store, scheduler=scheduler)
    assert tree(served.root) == before
    return store, result


def test_http_input_into_a_local_output_store(
    http_image: str, http_store: tuple[Path, object], local_run: Path, scheduler: str
) -> None:
    """Input over HTTP (read-only), outputs into a separate local store: the same labels
    and table as in-image on a local copy; the store is an OME-Zarr readers open on its
    own, records its image, and a second run finds its outputs there (reuse)."""
    store, result = http_store
    assert result.outputs["nuclei"] == str(store / "labels/nuclei")
    same_partition(labels(store), labels(local_run))
    got = read_table(store / "tables/nuclei_stats")
    ref = read_table(local_run / "tables/nuclei_stats")
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_allclose(got[2], ref[2])

    root = zarr.open_group(str(store), mode="r")
    assert root.attrs["ngff_engine_outputs"]["image"] == http_image
    label = root["labels/nuclei"].attrs["ome"]
    assert label["image-label"]["source"]["image"] == http_image
    _readers_open(store)

    again = run(Pipeline.from_yaml(MEASURE), input=http_image, output=store, scheduler=scheduler)
    assert again.tasks_done == 0 and set(again.reused) == {"nuclei", "nuclei_stats"}


def test_commands_take_urls_and_the_output_store(
    http_image: str,
    http_store: tuple[Path, object],
    scheduler: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """plan (sees the stored outputs: reuse), validate, info --output, status, preview
    (labels from the store) and diff (store labels against the image's truth) on the
    HTTP image."""
    store, _ = http_store
    code, out, err = cli(
        capsys, "plan", str(MEASURE), "--input", http_image, "--output", str(store), "--json"
    )
    assert code == 0, err
    assert set(json.loads(out)["reused"]) == {"labels/nuclei", "tables/nuclei_stats"}

    code, out, err = cli(capsys, "validate", str(MEASURE), "--input", http_image)
    assert code == 0 and f"image {http_image}" in out, err

    code, out, err = cli(capsys, "info", http_image, "--output", str(store), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert {i["name"] for i in info["labels"]} == {"truth", "annotations", "nuclei"}
    assert {t["name"] for t in info["tables"]} == {"rois", "nuclei_stats"}

    code, out, err = cli(capsys, "status", str(store), "--json")
    assert code == 0, err
    runs = json.loads(out)["runs"]
    assert runs and runs[0]["state"] == "completed" and runs[0]["input"] == http_image

    png = tmp_path / "p.png"
    argv = ["preview", http_image, "--output", str(store), "--labels", "nuclei"]
    code, out, err = cli(capsys, *argv, "--out", str(png), "--plane", "10")
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "objects of nuclei outlined" in out

    argv = ["diff", http_image, "nuclei", "truth", "--output", str(store)]
    code, out, err = cli(capsys, *argv, "--scheduler", scheduler, "--json")
    assert code == 0, err
    assert 0.5 < json.loads(out)["dice"] <= 1.0


def _readers_open(store: Path) -> None:
    """ome-zarr-py reads the label image (with its pyramid); ome-zarr-models validates it;
    anndata reads the table."""
    import anndata
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image_label import ImageLabel

    nodes = list(Reader(parse_url(str(store / "labels/nuclei")))())
    assert nodes and nodes[0].data[0].shape == SHAPE
    ImageLabel.from_zarr(zarr.open_group(str(store / "labels/nuclei"), mode="r"))
    assert anndata.read_zarr(str(store / "tables/nuclei_stats")).n_obs > 10


def test_s3_input_writes_its_outputs_into_the_s3_image(
    sample: Path, s3, local_run: Path, scheduler: str, tmp_path: Path
) -> None:
    """Input on S3 (storage options in the Python API), outputs into the image on S3;
    copied back, the outputs open with ome-zarr-py and validate with ome-zarr-models."""
    url = s3.upload(sample, "inplace", "sample.zarr")
    result = run(
        Pipeline.from_yaml(MEASURE), input=url, storage_options=s3.options, scheduler=scheduler
    )
    assert result.outputs["nuclei"] == f"{url}/labels/nuclei"
    same_partition(labels(url, s3.options), labels(local_run))
    fs = s3.filesystem()
    assert not fs.find("inplace/sample.zarr/_engine/locks")  # released
    assert not [p for p in fs.find("inplace/sample.zarr/_engine/runs") if "/markers/" in p]
    copy = tmp_path / "copy.zarr"
    fs.get("inplace/sample.zarr", str(copy), recursive=True)
    _readers_open(copy)
    listed = zarr.open_group(str(copy / "labels"), mode="r").attrs["ome"]["labels"]
    assert listed == ["truth", "annotations", "nuclei"]


def test_s3_input_into_an_s3_output_store_from_the_config(
    sample: Path, s3, local_run: Path, scheduler: str, tmp_path: Path
) -> None:
    """`output_store:` and `storage_options:` in the YAML config."""
    url = s3.upload(sample, "source", "sample.zarr")
    before = s3_tree(s3, "source/sample.zarr")
    s3.filesystem().mkdir("results")
    config = tmp_path / "pipeline.yaml"
    data = Pipeline.from_yaml(STANDARD).to_dict()
    data.update(input=url, output_store="s3://results/sample-out.zarr", storage_options=s3.options)
    config.write_text(json.dumps(data))
    run(Pipeline.from_yaml(config), scheduler=scheduler)
    assert s3_tree(s3, "source/sample.zarr") == before
    same_partition(labels("s3://results/sample-out.zarr", s3.options), labels(local_run))


# -- refusals: one line, exit 2, nothing written ------------------------------------------


def test_read_only_input_without_output_store_is_refused(
    http_image: str, served, capsys: pytest.CaptureFixture
) -> None:
    before = tree(served.root)
    code, _, err = cli(capsys, "run", str(STANDARD), "--input", http_image, "--quiet")
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert http_image in err and "not writable" in err and "--output" in err
    assert tree(served.root) == before


def test_http_errors_name_the_url_and_what_the_server_said(
    served, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    missing = served.url_of("nothing-here.zarr")
    code, _, err = cli(capsys, "info", missing)
    assert code == 2 and err.count("\n") == 1
    assert missing in err and "404" in err

    from servers import free_port

    unreachable = f"http://127.0.0.1:{free_port()}/x.zarr"
    store = tmp_path / "out.zarr"
    argv = ["run", str(STANDARD), "--input", unreachable, "--output", str(store), "--quiet"]
    code, _, err = cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert unreachable in err and "cannot connect" in err
    assert not store.exists()


def test_s3_errors_name_the_url_and_what_the_server_said(
    sample: Path, s3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    url = s3.upload(sample, "errors", "sample.zarr")
    before = s3_tree(s3, "errors")
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)

    code, _, err = cli(capsys, "info", "s3://no-such-bucket/sample.zarr")
    assert code == 2 and err.count("\n") == 1
    assert "s3://no-such-bucket/sample.zarr" in err and "bucket does not exist" in err

    code, _, err = cli(capsys, "info", f"{url}-missing")
    assert code == 2 and f"{url}-missing" in err and "404" in err

    # an output store in a bucket that does not exist: refused before anything is written
    out = "s3://no-such-bucket/out.zarr"
    code, _, err = cli(capsys, "run", str(STANDARD), "--input", url, "--output", out, "--quiet")
    assert code == 2 and err.count("\n") == 1
    assert out in err and "bucket does not exist" in err
    assert s3_tree(s3, "errors") == before

    # no credentials anywhere (environment, ~/.aws)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = cli(capsys, "info", url)
    assert code == 2 and err.count("\n") == 1
    assert url in err and "no S3 credentials" in err


def test_s3_access_denied(sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A server checking keys refuses unknown ones: HTTP 403, named (keys from the
    config's storage_options)."""
    from servers import s3_server

    with s3_server(check_keys=True) as strict:
        url = "s3://private/sample.zarr"
        config = tmp_path / "pipeline.yaml"
        data = Pipeline.from_yaml(STANDARD).to_dict()
        options = {**strict.options, "key": "unknown", "secret": "unknown"}
        data.update(input=url, storage_options=options)
        config.write_text(json.dumps(data))
        code, _, err = cli(capsys, "validate", str(config))
    assert code == 2 and err.count("\n") == 1
    assert url in err and "403" in err


# -- resume after kill -9 of a run writing to S3 -------------------------------------------


def _executable() -> str:
    beside = Path(sys.executable).with_name("ngff-engine")
    found = str(beside) if beside.exists() else shutil.which("ngff-engine")
    assert found, "the ngff-engine command is not installed"
    return found


def test_resume_after_kill_of_a_run_writing_to_s3(
    s3,
    scheduler: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kill -9 of `ngff-engine run` on an S3 image once some chunks of the label pass are
    marked done; `--resume` skips them and gives the labels of an uninterrupted run."""
    # label per chunk (this image is small enough for one whole block, which has no
    # chunks to kill between): here and in the runs started below, which inherit it
    monkeypatch.setenv("NGFF_ENGINE_LABEL_BLOCK_VOXELS", "0")
    shape, chunks = (16, 128, 128), (8, 32, 32)
    sample = Path(write_sample(tmp_path_factory.mktemp("kill") / "k.zarr", shape, chunks))
    reference = tmp_path / "reference.zarr"
    shutil.copytree(sample, reference)
    run(Pipeline.from_yaml(STANDARD), input=reference, scheduler=scheduler)
    url = s3.upload(sample, "kill", "sample.zarr")
    config = tmp_path / "pipeline.yaml"
    data = Pipeline.from_yaml(STANDARD).to_dict()
    data.update(input=url, storage_options=s3.options)
    config.write_text(json.dumps(data))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    argv = [_executable(), "run", str(config), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(
        argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    fs = s3.filesystem()

    def marked() -> int:
        found = [
            p for p in fs.find("kill/sample.zarr/_engine/runs") if "/markers/nuclei.label/" in p
        ]
        return sum(fs.cat(p).count(b"\n") for p in found if p.endswith(".done"))

    started = time.monotonic()
    while marked() < 4:
        assert proc.poll() is None, f"the run ended before the kill point: {proc.stderr.read()}"
        assert time.monotonic() - started < 120, "kill point never reached"
        # each look lists and reads the markers on the one moto server the run writes
        # through: every 0.05 s it reached the kill point in 10.2 s, every 0.25 s in 7.6 s
        time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = marked()
    assert done_at_kill < 32

    resumed = subprocess.run(
        [_executable(), "run", str(config), "--resume", "--json", "--scheduler", scheduler],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    label_stage = next(s for s in result["stages"] if s["name"] == "nuclei/label")
    assert label_stage["done"] <= 32 - done_at_kill
    np.testing.assert_array_equal(labels(url, s3.options), labels(reference))


def test_an_output_store_of_another_image_is_refused(
    http_store: tuple[Path, object], sample: Path, capsys: pytest.CaptureFixture
) -> None:
    store, _ = http_store
    before = tree(store)
    argv = ["run", str(STANDARD), "--input", str(sample), "--output", str(store), "--quiet"]
    code, _, err = cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert str(store) in err and "holds outputs of http://" in err
    assert tree(store) == before


def test_read_only_local_image_writes_to_an_output_store(
    sample: Path, local_run: Path, scheduler: str, tmp_path: Path
) -> None:
    """An image on a read-only file system (a tmpfs remounted read-only) runs with its
    outputs in a separate store; the image is untouched."""
    from test_errors_input import mounted

    with mounted(tmp_path / "ro", "4m") as folder:
        image = folder / "image.zarr"
        shutil.copytree(sample, image)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        before = tree(image)
        store = tmp_path / "out.zarr"
        run(Pipeline.from_yaml(MEASURE), input=image, output=store, scheduler=scheduler)
        assert tree(image) == before
        same_partition(labels(store), labels(local_run))
