"""The pixel classifier: trained from the sample's scribbles on ROI `train`, run on ROI
`test` (real 2-worker dask cluster, no mocks), and its parts on small numpy arrays."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest
import zarr
from conftest import Cli, SampleImages
from skimage.feature import multiscale_basic_features

from engine import Pipeline, run
from engine.core.errors import ConfigError, EngineError, OutputConflict
from engine.io.sample_image import sample_rois
from engine.runs.planning import make_plan
from tasks.classifier import TrainParams, block_samples, combine_samples, file_sha256
from tasks.features import FeatureSettings, pixel_features

SHAPE, CHUNKS = (64, 256, 256), (32, 64, 64)
# Intensity only: the scribbles keep 3 px off the nuclei, so edge and texture features
# place the border too far out on some samples (Dice 0.78 to 0.96 over sample seeds 0..4
# with all features at sigma 1..8; intensity at 0.5..8 gives 0.92 to 0.95).
TRAIN = {"sigma_min": 0.5, "sigma_max": 8, "edges": False, "texture": False}
TRAIN |= {"n_estimators": 50, "seed": 0}
DICE = 0.9319  # measured on this sample, seed 0: the fit is seeded, so it is reproducible


@pytest.fixture(scope="module")
def sample(sample_image: SampleImages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("classifier") / "sample.zarr"
    return sample_image(SHAPE, CHUNKS, seed=0, copy_to=path)


def _train(image: Path, **params) -> Pipeline:
    return Pipeline(input=str(image)).add("train", "train_pixel_classifier", **params)


def _predict(image: Path, model: str, name: str) -> Pipeline:
    return (
        Pipeline(input=str(image))
        .add(
            "prob", "predict_pixel_classifier", model=model, output={"kind": "image", "name": name}
        )
        .add("mask", "threshold", input="prob", method="value", value=0.5)
        .add("nuclei", "label", input="mask", output={"kind": "label", "name": f"{name}_labels"})
    )


@pytest.fixture(scope="module")
def trained(sample: Path, scheduler: str) -> Path:
    run(_train(sample, model="nuclei_rf", **TRAIN), roi="train", scheduler=scheduler)
    return sample / "_engine/models/nuclei_rf"


def test_features_equal_skimage_on_the_whole_image_and_by_block() -> None:
    image = (np.random.default_rng(0).random((30, 50, 40)) * 3000).astype(np.uint16)
    settings = FeatureSettings(sigma_min=1, sigma_max=4)
    whole = multiscale_basic_features(image, sigma_min=1, sigma_max=4)
    np.testing.assert_array_equal(pixel_features(image, settings), whole)
    h = settings.halo()
    assert h == 16 + 2
    for box in [((10, 20), (20, 30), (5, 25)), ((0, 12), (35, 50), (20, 40))]:  # inside, border
        read = tuple(slice(max(a - h, 0), min(b + h, n)) for (a, b), n in zip(box, image.shape))
        keep = tuple(slice(a - r.start, b - r.start) for (a, b), r in zip(box, read))
        part = pixel_features(image[read], settings, keep)
        np.testing.assert_array_equal(part, whole[tuple(slice(a, b) for a, b in box)])


def test_capped_samples_do_not_depend_on_chunking() -> None:
    rng = np.random.default_rng(1)
    features = rng.random((8, 12, 10, 3)).astype(np.float32)
    annotations = rng.choice([0, 0, 0, 1, 2, 3], size=(8, 12, 10)).astype(np.uint8)
    params = TrainParams(model="m", max_samples_per_class=7, seed=5)
    one = block_samples(features, annotations, (0, 0, 0), annotations.shape, params)
    blocks = []
    for z in (0, 4):
        for y in (0, 5):
            box = (slice(z, z + 4), slice(y, y + 7 if y else 5), slice(0, 10))
            origin = (z, y, 0)
            blocks.append(
                block_samples(features[box], annotations[box], origin, annotations.shape, params)
            )
    for parts in (blocks, blocks[::-1], [combine_samples(blocks[:2], params), *blocks[2:]]):
        combined = combine_samples(parts, params)
        np.testing.assert_array_equal(combined.index, one.index)
        np.testing.assert_array_equal(combined.classes, one.classes)
        np.testing.assert_array_equal(combined.features, one.features)
        assert combined.seen == one.seen
    assert np.bincount(one.classes).tolist() == [0, 7, 7, 7]
    assert one.seen == {c: int((annotations == c).sum()) for c in (1, 2, 3)}


def test_train_writes_the_model_artifact(
    sample: Path, trained: Path, scheduler: str, cli: Cli
) -> None:
    record = zarr.open_group(str(trained), mode="r").attrs.asdict()["ngff_engine"]
    info = record["model"]
    assert info["file"] == "model.joblib" and info["sha256"] == file_sha256(trained / info["file"])
    assert info["classes"] == [1, 2]
    assert info["features"]["sigma_max"] == 8 and info["halo"] == 32 and info["n_features"] == 5
    box = sample_rois(SHAPE)["train"]
    scribbles = zarr.open_group(str(sample), mode="r")["labels/annotations/s0"][box]
    counts = {str(c): int((scribbles == c).sum()) for c in (1, 2)}
    assert info["samples"]["annotated"] == info["samples"]["used"] == counts
    assert record["runs"][0]["roi"]["stop"] == [64, 128, 128]
    assert record["provenance"]["annotations"] == "labels/annotations"
    payload = joblib.load(trained / "model.joblib")
    assert payload["estimator"].n_estimators == 50 and payload["classes"] == [1, 2]
    ran = cli(["info", str(sample)])
    assert ran.code == 0
    assert "_engine/models/nuclei_rf: RandomForestClassifier, classes [1, 2]" in " ".join(
        ran.out.split()
    )
    again = run(_train(sample, model="nuclei_rf", **TRAIN), roi="train", scheduler=scheduler)
    assert again.tasks_done == 0 and again.stages == [] and again.reused == ["nuclei_rf"]
    assert file_sha256(trained / info["file"]) == info["sha256"]  # reused: not trained again
    changed = _train(sample, model="nuclei_rf", **{**TRAIN, "seed": 1})
    with pytest.raises(OutputConflict, match=r"params.seed: 0 -> 1\); use overwrite=True"):
        run(changed, roi="train", scheduler=scheduler)
    with pytest.raises(OutputConflict, match="a model is trained once: use overwrite=True"):
        run(_train(sample, model="nuclei_rf", **TRAIN), roi="test", scheduler=scheduler)


def test_predict_on_test_roi_then_threshold_and_label(
    sample: Path, trained: Path, scheduler: str
) -> None:
    result = run(_predict(sample, "nuclei_rf", "nuclei_prob"), roi="test", scheduler=scheduler)
    root = zarr.open_group(str(sample), mode="r")
    box = sample_rois(SHAPE)["test"]
    prob = root["results/nuclei_prob/s0"][...]
    assert prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
    outside = np.ones(SHAPE, dtype=bool)
    outside[box] = False
    assert not prob[outside].any()
    truth = root["labels/truth/s0"][box] > 0
    mask = prob[box] > 0.5
    dice = 2 * np.count_nonzero(mask & truth) / (np.count_nonzero(mask) + np.count_nonzero(truth))
    print(f"pixel Dice on ROI test: {dice:.4f}")
    assert dice >= 0.85
    assert dice == pytest.approx(DICE, abs=1e-4)
    labels = root["labels/nuclei_prob_labels/s0"][box]
    assert np.array_equal(labels > 0, mask) and result.labels["nuclei_prob_labels"] > 50
    provenance = root["results/nuclei_prob"].attrs.asdict()["ngff_engine"]["provenance"]
    sha = zarr.open_group(str(trained), mode="r").attrs.asdict()["ngff_engine"]["model"]["sha256"]
    assert provenance["models"] == {"prob": {"file": "model.joblib", "sha256": sha}}
    again = run(_predict(sample, "nuclei_rf", "nuclei_prob"), roi="test", scheduler=scheduler)
    assert again.tasks_done == 0 and sorted(again.reused) == ["nuclei_prob", "nuclei_prob_labels"]


def test_predict_equals_the_model_on_the_whole_image(
    sample_image: SampleImages, tmp_path: Path, scheduler: str
) -> None:
    """All feature kinds, chunks that do not divide the image, an ROI off the chunk grid:
    the engine's probabilities equal the forest on features of the whole image."""
    shape = (32, 128, 128)
    image = sample_image(shape, (16, 48, 48), seed=0, copy_to=tmp_path / "small.zarr")
    params = {"sigma_min": 0.5, "sigma_max": 4, "n_estimators": 10, "seed": 3}
    run(_train(image, model="all_features", **params), roi="train", scheduler=scheduler)
    roi = {"z": [5, 27], "y": [40, 113], "x": [3, 128]}
    predict = Pipeline(input=str(image)).add(
        "prob",
        "predict_pixel_classifier",
        model="all_features",
        foreground=1,
        output={"kind": "image", "name": "p"},
    )
    run(predict, roi=roi, scheduler=scheduler)
    box = tuple(slice(*roi[a]) for a in ("z", "y", "x"))
    root = zarr.open_group(str(image), mode="r")
    estimator = joblib.load(image / "_engine/models/all_features/model.joblib")["estimator"]
    features = multiscale_basic_features(root["s0"][...], sigma_min=0.5, sigma_max=4)[box]
    assert features.shape[-1] == 20  # 4 sigmas: intensity, edges, 3 eigenvalues
    expected = estimator.predict_proba(features.reshape(-1, 20))[:, 0].astype(np.float32)
    np.testing.assert_array_equal(root["results/p/s0"][box], expected.reshape(features.shape[:-1]))


def test_bad_input_is_one_config_error(
    sample: Path, trained: Path, scheduler: str, cli: Cli
) -> None:
    with pytest.raises(ConfigError) as err:
        make_plan(_predict(sample, "nope", "x"), roi="test")
    assert str(err.value).startswith(
        "step 'prob': params.model: no trained model 'nope' in "
    ) and str(err.value).endswith("(trained: nuclei_rf); run a train_pixel_classifier step first")
    with pytest.raises(ConfigError, match=r"step 'train': params.annotations: no label image "):
        make_plan(_train(sample, model="m", annotations="scribbles"), roi="train")
    with pytest.raises(ConfigError, match=r"step 'prob': params.foreground: class 7 is not one"):
        make_plan(
            Pipeline(input=str(sample)).add(
                "prob",
                "predict_pixel_classifier",
                model="nuclei_rf",
                foreground=7,
                output={"kind": "image", "name": "x"},
            )
        )
    with pytest.raises(ConfigError, match=r"step 'train': params.sigma_max: 1.0 is below"):
        _train(sample, model="m", sigma_min=2, sigma_max=1)
    corner = {"z": [0, 32], "y": [192, 256], "x": [192, 256]}  # in ROI test: no scribbles
    with pytest.raises(EngineError, match=r"step 'train': no annotated voxels"):
        run(_train(sample, model="empty", **TRAIN), roi=corner, scheduler=scheduler)
    assert not (sample / "_engine/models/empty").exists()
    config = sample.parent / "predict.yaml"
    config.write_text(_predict(sample, "nope", "x").to_yaml())
    ran = cli(["run", str(config), "--roi", "test", "--scheduler", scheduler])
    assert ran.code == 2
    err_lines = ran.err.strip().splitlines()
    assert len(err_lines) == 1 and "params.model: no trained model 'nope'" in err_lines[0]
