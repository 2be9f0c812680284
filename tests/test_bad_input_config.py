"""Bad input at the CLI, the config: unknown ops and parameters, bad values, a broken
graph, bad YAML, a missing file (the contract: tests/bad_input.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input import base_steps, edit, run_args, with_eval, write_config
from conftest import Cli, expect_user_error

from engine.cli.commands import main
from engine.core.errors import ConfigError

CONFIG_CASES = {
    "unknown op": (edit(0, op="gausian"), ["step 'smooth'", "gausian", "unknown op"]),
    "unknown param": (
        edit(0, params={"sigmaa": 1.0}),
        ["step 'smooth'", "sigmaa", "unknown parameter", "known: sigma"],
    ),
    "unknown param beside a good one": (
        edit(0, params={"sigma": 1.0, "truncat": 3.0}),
        ["step 'smooth'", "truncat", "unknown parameter"],
    ),
    "negative sigma": (
        edit(0, params={"sigma": -1.0}),
        ["step 'smooth'", "params.sigma", "greater than 0"],
    ),
    "negative sigma in a per-axis list": (
        edit(0, params={"sigma": [1.0, -2.0, 2.0]}),
        ["step 'smooth'", "params.sigma", "greater than 0", "-2.0"],
    ),
    "per-axis sigma of the wrong length": (
        edit(0, params={"sigma": [1.0, 2.0]}),
        ["step 'smooth'", "sigma has 2 values", "3 spatial axes"],
    ),
    "threshold value without value": (
        edit(1, params={"method": "value"}),
        ["step 'mask'", "params", "needs a 'value'"],
    ),
    "threshold unknown method": (
        edit(1, params={"method": "triangle"}),
        ["step 'mask'", "params.method", "'otsu', 'li' or 'percentile'"],
    ),
    "missing required param": (
        edit(0, params={}),
        ["step 'smooth'", "params.sigma", "required"],
    ),
    "duplicate step names": (
        edit(1, name="smooth", input="image"),
        ["unique", "repeated: smooth"],
    ),
    "dangling input": (edit(1, input="smoth"), ["step 'mask'", "'smoth'", "no step"]),
    "cycle": (edit(0, input="nuclei"), ["cycle", "smooth", "mask", "nuclei"]),
    "unused step": (
        [*base_steps(), {"name": "extra", "op": "median", "input": "smooth"}],
        ["step 'extra'", "no output and no step uses it"],
    ),
    "label output of a float step": (
        [{**edit(0)[0], "output": {"kind": "label", "name": "blur"}}],
        ["step 'smooth'", "label", "float32"],
    ),
    "function that cannot be imported": (
        edit(0, op="function", params={"function": "no_such_mod:f"}),
        ["step 'smooth'", "params.function", "no_such_mod"],
    ),
    "function missing in its module": (
        edit(0, op="function", params={"function": "user.functions:nope"}),
        ["step 'smooth'", "params.function", "'nope'"],
    ),
    "function path without a colon": (
        edit(0, op="function", params={"function": "user.functions.explode"}),
        ["step 'smooth'", "params.function", "module:function"],
    ),
    "label connectivity above 3": (
        edit(2, params={"connectivity": 4}),
        ["step 'nuclei'", "params.connectivity", "less than or equal to 3"],
    ),
    "unknown reference label image": (
        with_eval("nosuch"),
        ["step 'eval'", "params.reference 'nosuch'", "no label image", "truth, annotations"],
    ),
    "reference step without a label output": (
        with_eval("mask"),
        ["step 'eval'", "params.reference 'mask'", "without a label output"],
    ),
    "evaluate with a label output": (
        with_eval("truth")[:-1]
        + [{**with_eval("truth")[-1], "output": {"kind": "label", "name": "e"}}],
        ["step 'eval'", "op 'evaluate' needs output", "kind: table"],
    ),
    "evaluate with a table as input": (
        [
            *with_eval("truth"),
            {
                **with_eval("truth")[-1],
                "name": "e2",
                "input": "eval",
                "output": {"kind": "table", "name": "e2"},
            },
        ],
        ["step 'e2'", "input 'eval'", "is a table"],
    ),
    "versions value not allowed": (
        edit(2, output={"kind": "label", "name": "nuclei", "versions": "kep"}),
        ["step 'nuclei'", "output.versions", "'kep' is not allowed", "allowed: keep"],
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config(case: str, tmp_path: Path, image3d: Path, scheduler: str, cli: Cli) -> None:
    steps, words = CONFIG_CASES[case]
    config = write_config(tmp_path, steps)
    expect_user_error(cli, run_args(config, image3d, scheduler), [image3d], *words)


def test_bad_yaml_syntax(tmp_path: Path, image3d: Path, scheduler: str, cli: Cli) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(
        "steps:\n"
        "  - {name: smooth, op: gaussian, params: {sigma: 1.0}}\n"
        "  - {name: mask, op: threshold, input: smooth\n"
    )
    expect_user_error(
        cli,
        run_args(config, image3d, scheduler),
        [image3d],
        str(config),
        "not valid YAML",
        "line ",
    )


def test_yaml_that_is_not_a_mapping(
    tmp_path: Path, image3d: Path, scheduler: str, cli: Cli
) -> None:
    config = tmp_path / "list.yaml"
    config.write_text("- smooth\n- mask\n")
    expect_user_error(cli, run_args(config, image3d, scheduler), [image3d], str(config), "mapping")


def test_config_file_missing(tmp_path: Path, image3d: Path, scheduler: str, cli: Cli) -> None:
    config = tmp_path / "nowhere.yaml"
    expect_user_error(
        cli, run_args(config, image3d, scheduler), [image3d], str(config), "cannot read"
    )


def test_debug_flag_shows_the_exception(tmp_path: Path, image3d: Path, scheduler: str) -> None:
    """The one-line message is a choice of the CLI: --debug lets the exception through."""
    config = write_config(tmp_path, edit(0, op="gausian"))
    with pytest.raises(ConfigError, match="gausian"):
        main(["--debug", *run_args(config, image3d, scheduler)])
