from __future__ import annotations

from pathlib import Path

import pytest

from engine import ConfigError, Pipeline

CONFIGS = Path(__file__).parents[1] / "configs"


def test_yaml_and_python_are_equivalent_and_round_trip():
    loaded = Pipeline.from_yaml(CONFIGS / "nuclei.yaml")
    built = (
        Pipeline(input="sample.zarr")
        .with_roi("preview", units="pixel", level=0, z=[0, 64], y=[64, 192], x=[64, 192])
        .with_roi("organoid", units="micrometer", z=[5.0, 30.0], y=[50.0, 120.0], x=[20.0, 90.0])
        .add("smooth", "gaussian", "image", sigma=2.0)
        .add("mask", "threshold", "smooth", method="otsu")
        .add("nuclei", "label", "mask", {"kind": "label", "name": "nuclei"})
    )
    assert built == loaded
    assert Pipeline.build(__import__("yaml").safe_load(loaded.to_yaml())) == loaded


def test_structured_input_round_trips(tmp_path):
    p = Pipeline().add(
        "smooth",
        "gaussian",
        {"source": "image", "channel": 1, "level": 1},
        {"kind": "image", "name": "smooth"},
        sigma=[1.0, 2.0, 2.0],
        units="micrometer",
    )
    path = tmp_path / "p.yaml"
    path.write_text(p.to_yaml())
    again = Pipeline.from_yaml(path)
    assert again == p
    assert again.steps[0].input_ref.channel == 1


def test_graph_order_and_upstream():
    p = Pipeline.from_yaml(CONFIGS / "nuclei.yaml")
    assert [s.name for s in p.ordered_steps()] == ["smooth", "mask", "nuclei"]
    assert [s.name for s in p.upstream("mask")] == ["smooth", "mask"]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"name": "a", "op": "blur"}], "step 'a': op: unknown op 'blur'"),
        ([{"name": "a", "op": "gaussian", "params": {"sigmaa": 1}}], "step 'a': params.sigma"),
        ([{"name": "a", "op": "gaussian", "params": {"sigma": -1}}], "step 'a': params.sigma"),
        ([{"name": "a", "op": "threshold", "params": {"method": "value"}}], "needs a 'value'"),
        ([{"name": "a", "op": "label", "input": "nothing"}], "input 'nothing' is no step"),
        (
            [
                {"name": "a", "op": "median", "input": "b"},
                {
                    "name": "b",
                    "op": "median",
                    "input": "a",
                    "output": {"kind": "image", "name": "b"},
                },
            ],
            "cycle",
        ),
        (
            [{"name": "a", "op": "median"}, {"name": "a", "op": "median"}],
            "repeated: a",
        ),
    ],
)
def test_bad_configs_name_the_step_and_field(steps, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Pipeline.build({"steps": steps})


def test_unused_step_is_refused_before_running():
    p = Pipeline().add("a", "median").add("b", "median", output={"kind": "image", "name": "b"})
    with pytest.raises(ConfigError, match="step 'a': has no output and no step uses it"):
        p.check_complete()
