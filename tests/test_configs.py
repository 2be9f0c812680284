"""The shipped example configs stay valid and mean what they say on the sample image.

Each config is planned (metadata only, no chunk computed) on the default sample, whose
chunks are 64x256x256 (2x2x2 chunks): the stages and their kinds, the outputs with their
kinds and dtypes, the box of every ROI the config names (its own and the sample's
`train` and `test`) and the tasks on it, and the cluster of the SLURM config. A config
that silently changes meaning (another op, threshold, output, ROI) fails here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import CONFIGS, SampleImages

from engine import Pipeline
from engine.core.geometry import Roi
from engine.execute.placement import resolve_cluster
from engine.runs.planning import make_plan
from engine.runs.runner import run

CONFIG_FILES = sorted(CONFIGS.glob("*.yaml"))
SHAPE = (128, 512, 512)  # the default sample: the example ROIs are made for it


@dataclass(frozen=True)
class Expected:
    """What a config makes of the sample."""

    stages: list[tuple[str, str]]  # (name, kind) in plan order
    outputs: list[tuple[str, str, str | None, int]]  # path, kind, dtype, levels
    # stage -> its fused ops: (op, halo, params; for op "model" its own params aside: they
    # hold the model file's path), on the whole image
    chains: dict[str, list[tuple]]
    # ROI name (None: the whole image) -> (start, stop) at level 0, tasks
    rois: dict[str | None, tuple[tuple[int, ...], tuple[int, ...], int]]
    reused: dict[str, list[str]] = field(default_factory=dict)  # ROI -> outputs read as they are
    # ROI -> its stages where not `stages`: a small ROI is labelled as one block
    roi_stages: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def box(start: tuple[int, ...], stop: tuple[int, ...], tasks: int) -> tuple:
    return start, stop, tasks


WHOLE = ((0, 0, 0), SHAPE)
TRAIN = ((0, 0, 0), (128, 256, 256))  # the sample's ROI table: y and x halves
TEST = ((0, 256, 256), (128, 512, 512))
PREVIEW = ((0, 64, 64), (64, 192, 192))  # pixels, as in the config
ORGANOID = ((5, 100, 40), (30, 240, 180))  # micrometers / the sample's spacing (1, 0.5, 0.5)

# gaussian -> Otsu (two passes over the ROI) -> connected components stitched across chunks;
# an ROI of at most 16 Mi voxels is labelled as one block, final ids straight into the
# output (engine/plan/stitching.py): the whole sample (32 Mi) is not, its ROIs are;
# Otsu's passes over the train and test ROIs (two chunks each) run as four tasks each
# (engine/plan/chains.py, `_reduction_chunks`), the preview and organoid ROIs (under two
# million voxels) as their chunks
OTSU_PASSES = [("mask/reduce-0", "reduce"), ("mask/reduce-1", "reduce")]
STITCHED = [("nuclei/merge", "merge"), ("nuclei/relabel", "relabel")]
PYRAMID = [("nuclei/pyramid-1", "pyramid"), ("nuclei/pyramid-2", "pyramid")]
LABELS = [("nuclei/label", "label"), ("nuclei/faces", "faces"), *STITCHED, *PYRAMID]
STANDARD = [*OTSU_PASSES, *LABELS]
BLOCK = [("nuclei/label", "label-block"), *PYRAMID]
STANDARD_BLOCK = [*OTSU_PASSES, *BLOCK]
OTSU = ("threshold", (0, 0, 0), {"method": "otsu"})
STANDARD_CHAINS = {
    # sigma 2 -> halo int(4 * 2 + 0.5) = 8
    "mask/reduce-0": [("gaussian", (8, 8, 8), {"sigma": 2.0}), OTSU],
    "mask/reduce-1": [OTSU],
    "nuclei/label": [OTSU, ("label", (0, 0, 0), {})],
}
NUCLEI_LABELS = ("labels/nuclei", "label", None, 3)  # label dtype: chosen when written

WATERSHED = {"segmenter": "watershed", "overlap": 12, "iou_threshold": 0.5}
TRAIN_PARAMS = {
    "annotations": "annotations",
    "model": "nuclei_rf",
    "sigma_min": 0.5,
    "sigma_max": 8,
    "edges": False,
    "texture": False,
    "n_estimators": 50,
    "seed": 0,
}

EXPECTED = {
    "nuclei.yaml": Expected(
        STANDARD,
        [NUCLEI_LABELS],
        STANDARD_CHAINS,
        {
            None: box(*WHOLE, 44),
            "preview": box(*PREVIEW, 5),
            "organoid": box(*ORGANOID, 5),
            "train": box(*TRAIN, 13),
            "test": box(*TEST, 13),
        },
        roi_stages=dict.fromkeys(["preview", "organoid", "train", "test"], STANDARD_BLOCK),
    ),
    "nuclei-slurm.yaml": Expected(
        STANDARD,
        [NUCLEI_LABELS],
        STANDARD_CHAINS,
        {None: box(*WHOLE, 44), "test": box(*TEST, 13)},
        roi_stages={"test": STANDARD_BLOCK},
    ),
    "nuclei-measure.yaml": Expected(
        [*STANDARD, ("stats/measure", "measure")],
        [NUCLEI_LABELS, ("tables/nuclei_stats", "table", None, 3)],
        STANDARD_CHAINS,
        {None: box(*WHOLE, 52), "test": box(*TEST, 15)},
        roi_stages={"test": [*STANDARD_BLOCK, ("stats/measure", "measure")]},
    ),
    "nuclei-evaluate.yaml": Expected(
        [*STANDARD, ("eval/evaluate", "evaluate")],
        [NUCLEI_LABELS, ("tables/nuclei_eval", "table", None, 3)],
        STANDARD_CHAINS,
        {None: box(*WHOLE, 52), "train": box(*TRAIN, 15)},
        roi_stages={"train": [*STANDARD_BLOCK, ("eval/evaluate", "evaluate")]},
    ),
    "nuclei-instance.yaml": Expected(
        [*OTSU_PASSES, ("nuclei/segment", "segment"), ("nuclei/match", "match")]
        + [*STITCHED, *PYRAMID],
        [("labels/nuclei_ws", "label", None, 3)],
        {
            **{k: v for k, v in STANDARD_CHAINS.items() if k.startswith("mask/")},
            "nuclei/segment": [OTSU, ("instance", (12, 12, 12), WATERSHED)],
            "nuclei/match": [("instance", (12, 12, 12), WATERSHED)],
        },
        {None: box(*WHOLE, 44), "preview": box(*PREVIEW, 5)},
        # the preview ROI is inside one chunk: one task segments it, final ids
        roi_stages={"preview": [*OTSU_PASSES, ("nuclei/segment", "segment-block"), *PYRAMID]},
    ),
    "nuclei-train.yaml": Expected(
        [("train/train", "train")],
        [("_engine/models/nuclei_rf", "model", None, 0)],
        {"train/train": [("train_pixel_classifier", (32, 32, 32), TRAIN_PARAMS)]},
        # on ROI train the fixture trained this very model: it is reused, nothing runs
        {None: box(*WHOLE, 8), "train": box(*TRAIN, 0)},
        reused={"train": ["_engine/models/nuclei_rf"]},
    ),
    "adjust-test-eval.yaml": Expected(
        [
            ("prob", "blockwise"),
            ("prob/pyramid-1", "pyramid"),
            ("prob/pyramid-2", "pyramid"),
            *LABELS,
            ("eval/evaluate", "evaluate"),
        ],
        [
            ("results/nuclei_prob", "image", "float32", 3),
            ("labels/nuclei_rf", "label", None, 3),
            ("tables/nuclei_rf_eval", "table", None, 3),
        ],
        {
            "prob": [("model", (32, 32, 32), None)],  # the features' largest sigma: 4 x 8
            "nuclei/label": [
                ("threshold", (0, 0, 0), {"method": "value", "value": 0.5}),
                ("label", (0, 0, 0), {}),
            ],
        },
        {None: box(*WHOLE, 48), "test": box(*TEST, 13)},
        roi_stages={
            "test": [
                ("prob", "blockwise"),
                ("prob/pyramid-1", "pyramid"),
                ("prob/pyramid-2", "pyramid"),
                *BLOCK,
                ("eval/evaluate", "evaluate"),
            ]
        },
    ),
}


@pytest.fixture(scope="module")
def sample(sample_image: SampleImages, tmp_path_factory, scheduler) -> Path:
    """The default sample the example ROIs are made for, with the model that configs
    predicting with a pixel classifier need (trained as the README's loop does)."""
    path = sample_image(SHAPE, copy_to=tmp_path_factory.mktemp("configs") / "sample.zarr")
    train = Pipeline.from_yaml(CONFIGS / "nuclei-train.yaml")
    run(train, path, roi="train", scheduler=scheduler)
    return path


@pytest.mark.parametrize("config", CONFIG_FILES, ids=[c.name for c in CONFIG_FILES])
def test_config_is_valid_and_plans_on_the_sample(config, sample):
    pipeline = Pipeline.from_yaml(config)
    pipeline.check_complete()
    assert Pipeline.build(pipeline.to_dict()) == pipeline
    assert pipeline.input == "sample.zarr"  # what `ngff-engine sample sample.zarr` writes
    for roi in [None, *pipeline.rois]:
        _, plan = make_plan(pipeline, sample, roi)
        assert plan.task_count > 0


@pytest.mark.parametrize("config", CONFIG_FILES, ids=[c.name for c in CONFIG_FILES])
def test_config_makes_what_it_says(config, sample):
    want = EXPECTED[config.name]  # a new config gets its expectations here
    pipeline = Pipeline.from_yaml(config)
    assert set(pipeline.rois) <= set(want.rois)  # every ROI of the config is checked
    _, plan = make_plan(pipeline, sample, None)
    chains = {
        stage.name: [
            (link.op, link.halo, None if link.op == "model" else link.params)
            for link in stage.chain
        ]
        for stage in plan.stages
        if stage.chain
    }
    assert chains == want.chains
    for roi, (start, stop, tasks) in want.rois.items():
        _, plan = make_plan(pipeline, sample, roi)
        assert plan.roi == Roi(start, stop, 0), roi
        assert plan.task_count == tasks, roi
        assert [o.path for o in plan.reused] == want.reused.get(roi, []), roi
        if roi in want.reused:
            assert plan.stages == () and plan.outputs == (), roi
            continue
        stages = want.roi_stages.get(roi, want.stages) if roi else want.stages
        assert [(s.name, s.kind) for s in plan.stages] == stages, roi
        outputs = [(o.path, o.kind, o.dtype, len(o.levels)) for o in plan.outputs]
        assert outputs == want.outputs, roi


def test_slurm_config_cluster():
    pipeline = Pipeline.from_yaml(CONFIGS / "nuclei-slurm.yaml")
    cluster = pipeline.cluster
    assert (cluster.kind, cluster.partition, cluster.walltime) == ("slurm", "debug", "00:30:00")
    assert (cluster.jobs, cluster.cores, cluster.processes, cluster.memory) == (2, 1, 1, "2GiB")
    assert not cluster.adaptive  # a fixed number of worker jobs
    assert resolve_cluster(cluster, {}) == cluster  # no flags: the config's cluster as it is
    for name in CONFIG_FILES:  # the only config that leaves this machine
        if name.name != "nuclei-slurm.yaml":
            assert Pipeline.from_yaml(name).cluster is None, name


def test_there_are_example_configs():
    names = {c.name for c in CONFIG_FILES}
    assert {
        "nuclei.yaml",
        "nuclei-measure.yaml",
        "nuclei-slurm.yaml",
        "nuclei-evaluate.yaml",
        "nuclei-train.yaml",
        "adjust-test-eval.yaml",
    } <= names
    assert names == set(EXPECTED)
