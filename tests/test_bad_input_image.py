"""Bad input at the CLI, the image and the outputs already in it: no image, not a zarr,
not OME-Zarr, a step that does not fit its axes; an output of another config, of the same
config without --update, not written by the engine (the contract: tests/bad_input.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr
from bad_input import base_steps, edit, run_args, write_config
from conftest import Cli, SampleImages, expect_user_error, tree_hash

from engine import Pipeline, run
from engine.core.errors import ConfigError


@pytest.fixture(scope="module")
def image_with_output(
    sample_image: SampleImages, tmp_path_factory: pytest.TempPathFactory, scheduler: str
) -> Path:
    """An image with labels/nuclei already written by the base pipeline (sigma 1)."""
    path = tmp_path_factory.mktemp("without") / "image.zarr"
    sample_image((8, 64, 64), (4, 32, 32), "0.4", seed=3, copy_to=path)
    run(Pipeline.build({"steps": base_steps()}), input=path, scheduler=scheduler)
    assert (path / "labels" / "nuclei" / ".zattrs").exists()
    return path


def test_input_path_missing(tmp_path: Path, scheduler: str, cli: Cli) -> None:
    config = write_config(tmp_path)
    missing = tmp_path / "nowhere.zarr"
    expect_user_error(cli, run_args(config, missing, scheduler), [], str(missing), "no such file")
    assert not missing.exists()


def test_no_input_at_all(tmp_path: Path, cli: Cli) -> None:
    config = write_config(tmp_path)
    expect_user_error(cli, ["run", str(config)], [], "no input image", "--input")


def test_input_is_a_plain_directory(tmp_path: Path, scheduler: str, cli: Cli) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cell.tif").write_bytes(b"II*\x00not really")
    config = write_config(tmp_path)
    expect_user_error(
        cli, run_args(config, folder, scheduler), [folder], str(folder), "not a zarr group"
    )


def test_input_is_zarr_but_not_ome_zarr(tmp_path: Path, scheduler: str, cli: Cli) -> None:
    path = tmp_path / "plain.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("data", shape=(16, 16), chunks=(8, 8), dtype="uint8")
    config = write_config(tmp_path)
    expect_user_error(
        cli,
        run_args(config, path, scheduler),
        [path],
        str(path),
        "not an OME-Zarr image",
        "multiscales",
    )


def test_label_connectivity_above_ndim(
    tmp_path: Path, image2d: Path, scheduler: str, cli: Cli
) -> None:
    config = write_config(tmp_path, edit(2, params={"connectivity": 3}))
    expect_user_error(
        cli,
        run_args(config, image2d, scheduler),
        [image2d],
        "step 'nuclei'",
        "connectivity 3",
        "2 spatial axes",
    )


def test_channel_on_an_image_without_channels(
    tmp_path: Path, image3d: Path, scheduler: str, cli: Cli
) -> None:
    config = write_config(tmp_path, edit(0, input={"source": "image", "channel": 1}))
    expect_user_error(
        cli,
        run_args(config, image3d, scheduler),
        [image3d],
        "step 'smooth'",
        "input.channel",
        "no c axis",
    )


def test_existing_output_with_a_different_config(
    tmp_path: Path, image_with_output: Path, scheduler: str, cli: Cli
) -> None:
    config = write_config(tmp_path, edit(0, params={"sigma": 2.0}))
    line = expect_user_error(
        cli,
        run_args(config, image_with_output, scheduler),
        [image_with_output],
        "labels/nuclei",
        "different step config",
        "sigma",
        "--overwrite",
    )
    assert "1.0" in line and "2.0" in line  # old and new value


def test_existing_output_with_the_same_config_needs_update(
    tmp_path: Path, image_with_output: Path, scheduler: str, cli: Cli
) -> None:
    config = write_config(tmp_path)
    expect_user_error(
        cli,
        run_args(config, image_with_output, scheduler, "--roi", "0:4,0:32,0:32"),
        [image_with_output],
        "labels/nuclei",
        "same config",
        "--update",
        "--overwrite",
    )


def test_overwrite_and_update_together(
    tmp_path: Path, image_with_output: Path, scheduler: str, cli: Cli
) -> None:
    config = write_config(tmp_path)
    before = tree_hash(image_with_output)
    argv = run_args(config, image_with_output, scheduler, "--overwrite", "--update")
    result = cli(argv)
    code, output = result.code, result.output
    assert code == 2
    assert "Traceback" not in output
    assert "--update" in output and "--overwrite" in output and "not allowed" in output
    assert tree_hash(image_with_output) == before


def test_overwrite_and_update_together_in_python(image_with_output: Path) -> None:
    before = tree_hash(image_with_output)
    with pytest.raises(ConfigError, match="overwrite=True and update=True"):
        run(
            Pipeline.build({"steps": base_steps()}),
            input=image_with_output,
            overwrite=True,
            update=True,
        )
    assert tree_hash(image_with_output) == before


def test_existing_output_not_written_by_the_engine(
    tmp_path: Path, image3d: Path, scheduler: str, cli: Cli
) -> None:
    """The sample's labels/truth was not made by a pipeline: an output of that name is
    refused, saying so (not by listing every field of the pipeline as a 'difference')."""
    steps = edit(2, output={"kind": "label", "name": "truth"})
    config = write_config(tmp_path, steps)
    line = expect_user_error(
        cli,
        run_args(config, image3d, scheduler),
        [image3d],
        "labels/truth",
        "--overwrite",
    )
    assert "different step config" not in line, line
    assert "not written by" in line, line


def test_existing_output_path_that_is_not_a_zarr_group(
    tmp_path: Path,
    sample_image: SampleImages,
    scheduler: str,
    cli: Cli,
) -> None:
    """A stray folder where the output would go is someone else's: refuse, do not crash."""
    image = sample_image((8, 64, 64), (4, 32, 32), "0.5", copy_to=tmp_path / "image.zarr")
    stray = image / "labels" / "nuclei"
    stray.mkdir()
    (stray / "README.txt").write_text("my notes, not an output")
    config = write_config(tmp_path)
    expect_user_error(
        cli,
        run_args(config, image, scheduler),
        [image],
        "labels/nuclei",
        "--overwrite",
    )
