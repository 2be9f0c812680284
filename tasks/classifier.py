"""A pixel classifier trained from scribbles: random forest on multiscale pixel features.

Training (`train_pixel_classifier`) is a map-reduce over the training ROI. Each chunk
computes its features with their halo (tasks/features.py) and keeps the annotated
voxels (annotation > 0; the value is the class) as samples (`block_samples`); the
engine combines the chunks' samples (`combine_samples`) and fits one
RandomForestClassifier (`fit_classifier`), saved as a model artifact (`save_classifier`).

Memory stays bounded by `max_samples_per_class`: each class keeps the samples with the
smallest priority, a hash of (seed, voxel index). That is the same set whatever the
chunking, the order chunks finish in, or how partials are paired (the k smallest of a
union are among the k smallest of its parts), so the fit is reproducible for a seed.
Samples reach the forest sorted by (class, priority), again independent of chunking.

Prediction (`predict_pixel_classifier`) runs through the model interface (tasks/model.py):
the engine turns the step into `op: model` with the factory `pixel_classifier`, which
loads the artifact once per worker process and returns the probability of one class
(default: the largest class value, e.g. 2 = nucleus in the sample's scribbles) as float32.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from tasks.features import FeatureSettings, pixel_features
from tasks.model import Placement
from tasks.spec import Context, OpSpec, Params, done_by_engine

if TYPE_CHECKING:  # scikit-learn takes ~1.5 s to import: only training and prediction need it
    from sklearn.ensemble import RandomForestClassifier

MODEL_FACTORY = "tasks.classifier:pixel_classifier"
MODEL_FILE = "model.joblib"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _plain_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"'{name}' is not a plain name (letters, digits, '_', '.', '-')")
    return name


class TrainParams(Params):
    """`model`: the artifact's name (`_engine/models/<model>/`); `annotations`: the label
    image holding the scribbles (0 = unlabelled, other values = classes). Feature
    settings are those of `skimage.feature.multiscale_basic_features`, sigmas in pixels."""

    model: str
    annotations: str = "annotations"
    sigma_min: float = Field(default=0.5, gt=0)
    sigma_max: float = Field(default=8.0, gt=0)
    num_sigma: int | None = Field(default=None, ge=1)
    intensity: bool = True
    edges: bool = True
    texture: bool = True
    n_estimators: int = Field(default=100, ge=1)
    max_depth: int | None = Field(default=None, ge=1)
    max_samples_per_class: int = Field(default=50_000, ge=1)
    seed: int = Field(default=0, ge=0)

    @field_validator("model", "annotations")
    @classmethod
    def _plain(cls, name: str) -> str:
        return _plain_name(name)

    @field_validator("sigma_max")
    @classmethod
    def _above_min(cls, sigma_max: float, info: ValidationInfo) -> float:
        sigma_min = info.data.get("sigma_min")
        if sigma_min is not None and sigma_max < sigma_min:
            raise ValueError(f"{sigma_max} is below sigma_min ({sigma_min})")
        return sigma_max

    @model_validator(mode="after")
    def _some_features(self) -> TrainParams:
        if not (self.intensity or self.edges or self.texture):
            raise ValueError("at least one of intensity, edges, texture must be true")
        return self

    def features(self) -> FeatureSettings:
        return FeatureSettings(
            self.sigma_min,
            self.sigma_max,
            self.num_sigma,
            self.intensity,
            self.edges,
            self.texture,
        )


class PredictParams(Placement):
    """`model`: a trained artifact's name; `foreground`: the class whose probability is
    written (default: the largest class value the model knows)."""

    model: str
    foreground: int | None = None

    @field_validator("model")
    @classmethod
    def _plain(cls, name: str) -> str:
        return _plain_name(name)


# --- training ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Samples:
    """Annotated voxels of some blocks: features, class, global voxel index; and how many
    voxels each class had before the cap (`seen`)."""

    features: np.ndarray  # (n, n_features) float32
    classes: np.ndarray  # (n,) int64
    index: np.ndarray  # (n,) uint64, flat index in the image (time, then spatial axes)
    seen: dict[int, int] = field(default_factory=dict)


def priority(index: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random uint64 per voxel index (splitmix64 of index + seed): the cap's order."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64(seed) * golden
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _capped(samples: Samples, cap: int, seed: int) -> Samples:
    """At most `cap` samples per class, those of smallest priority; sorted by (class,
    priority, index)."""
    order = np.lexsort((samples.index, priority(samples.index, seed), samples.classes))
    classes = samples.classes[order]
    starts = np.searchsorted(classes, classes, side="left")
    order = order[np.arange(len(order)) - starts < cap]
    return Samples(
        samples.features[order], samples.classes[order], samples.index[order], samples.seen
    )


def block_samples(
    features: np.ndarray,
    annotations: np.ndarray,
    origin: Sequence[int],
    extent: Sequence[int],
    params: TrainParams,
) -> Samples:
    """The annotated voxels of one block: `features` is (*block, n_features), `origin` the
    block's position and `extent` the image's shape (for global voxel indices)."""
    if features.shape[:-1] != annotations.shape:
        raise ValueError(f"features {features.shape} do not fit annotations {annotations.shape}")
    where = np.nonzero(annotations)
    coords = tuple(c + int(o) for c, o in zip(where, origin, strict=True))
    index = np.ravel_multi_index(coords, tuple(int(e) for e in extent)).astype(np.uint64)
    classes = annotations[where].astype(np.int64)
    values, counts = np.unique(classes, return_counts=True)
    seen = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
    samples = Samples(features[where].astype(np.float32, copy=False), classes, index, seen)
    return _capped(samples, params.max_samples_per_class, params.seed)


def combine_samples(parts: Sequence[Samples | None], params: TrainParams) -> Samples | None:
    """The samples of many blocks, capped per class as one block's would be."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    seen: dict[int, int] = {}
    for part in parts:
        for cls, n in part.seen.items():
            seen[cls] = seen.get(cls, 0) + n
    merged = Samples(
        np.concatenate([p.features for p in parts]),
        np.concatenate([p.classes for p in parts]),
        np.concatenate([p.index for p in parts]),
        seen,
    )
    return _capped(merged, params.max_samples_per_class, params.seed)


@dataclass(frozen=True)
class TrainedClassifier:
    """A fitted forest with what prediction and provenance need to know about it."""

    estimator: RandomForestClassifier
    features: FeatureSettings
    classes: tuple[int, ...]
    seen: dict[int, int]
    used: dict[int, int]

    def info(self) -> dict[str, Any]:
        """JSON-able facts for the artifact's attributes."""
        import sklearn

        est = self.estimator
        return {
            "estimator": type(est).__name__,
            "sklearn_version": sklearn.__version__,
            "estimator_params": {
                "n_estimators": est.n_estimators,
                "max_depth": est.max_depth,
                "random_state": est.random_state,
            },
            "features": self.features.to_json(),
            "n_features": int(est.n_features_in_),
            "halo": self.features.halo(),
            "classes": list(self.classes),
            "samples": {
                "annotated": {str(k): v for k, v in sorted(self.seen.items())},
                "used": {str(k): v for k, v in sorted(self.used.items())},
            },
        }


def check_samples(samples: Samples | None, params: TrainParams) -> Samples:
    """Samples a classifier can learn from: some, of at least two classes."""
    if samples is None or len(samples.classes) == 0:
        raise ValueError(f"no annotated voxels (label image '{params.annotations}' > 0) in the ROI")
    classes = np.unique(samples.classes)
    if len(classes) < 2:
        raise ValueError(
            f"the annotations in the ROI hold only class {int(classes[0])}; "
            "a classifier needs at least two classes"
        )
    return samples


def fit_classifier(samples: Samples, params: TrainParams) -> TrainedClassifier:
    """One RandomForestClassifier on the combined samples (seeded: reproducible)."""
    from sklearn.ensemble import RandomForestClassifier

    samples = check_samples(samples, params)
    classes, counts = np.unique(samples.classes, return_counts=True)
    estimator = RandomForestClassifier(
        n_estimators=params.n_estimators,
        max_depth=params.max_depth,
        random_state=params.seed,
        n_jobs=1,
    )
    estimator.fit(samples.features, samples.classes)
    used = {int(c): int(n) for c, n in zip(classes, counts, strict=True)}
    return TrainedClassifier(
        estimator, params.features(), tuple(int(c) for c in classes), samples.seen, used
    )


def train_features(block: np.ndarray, params: TrainParams, ctx: Context, value: Any = None):
    """The per-block map of training: the features of the block's voxels."""
    return pixel_features(block, params.features())


def train_features_cropped(
    block: np.ndarray, params: TrainParams, ctx: Context, value: Any, keep: tuple[slice, ...]
) -> np.ndarray:
    """`train_features(...)[keep]`, computed for the kept voxels only (the engine's way)."""
    return pixel_features(block, params.features(), keep)


# --- the artifact ---------------------------------------------------------------------------


def save_classifier(trained: TrainedClassifier, path: str | Path) -> str:
    """Write the model file (joblib of plain data: estimator, feature settings, classes);
    return its sha256, by which plans and worker caches tell model versions apart."""
    import joblib

    payload = {
        "estimator": trained.estimator,
        "features": trained.features.to_json(),
        "classes": list(trained.classes),
        "seen": trained.seen,
        "used": trained.used,
    }
    joblib.dump(payload, path)
    return file_sha256(path)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_classifier(path: str | Path, sha256: str | None = None) -> TrainedClassifier:
    if sha256 is not None and file_sha256(path) != sha256:
        raise ValueError(f"model file {path} changed since the plan was made (sha256 differs)")
    import joblib

    payload = joblib.load(path)
    return TrainedClassifier(
        payload["estimator"],
        FeatureSettings(**payload["features"]),
        tuple(payload["classes"]),
        payload["seen"],
        payload["used"],
    )


# --- prediction through the model interface -------------------------------------------------


def foreground_class(params: PredictParams, classes: Sequence[int]) -> int:
    if params.foreground is None:
        return int(max(classes))
    if params.foreground not in classes:
        raise ValueError(f"class {params.foreground} is not one the model knows ({list(classes)})")
    return params.foreground


def pixel_classifier(
    path: str, foreground: int, sha256: str | None = None
) -> Callable[..., np.ndarray]:
    """The model factory: load the artifact, return block -> P(foreground) as float32.

    The callable takes `keep`, so features and forest run on the kept voxels only.
    """
    trained = load_classifier(path, sha256)
    column = trained.classes.index(foreground)

    def predict(block: np.ndarray, keep: Sequence[slice] | None = None) -> np.ndarray:
        features = pixel_features(block, trained.features, keep)
        flat = features.reshape(-1, features.shape[-1])
        proba = trained.estimator.predict_proba(flat)[:, column]
        return proba.astype(np.float32).reshape(features.shape[:-1])

    return predict


def model_op_params(params: PredictParams, path: str, info: dict[str, Any]) -> dict[str, Any]:
    """`op: model` parameters that run a predict step: the artifact's file and version,
    its halo (from its feature settings), float32 out."""
    return {
        "model": MODEL_FACTORY,
        "kwargs": {
            "path": path,
            "foreground": foreground_class(params, info["classes"]),
            "sha256": info["sha256"],
        },
        "halo": int(info["halo"]),
        "dtype": "float32",
        "batch_size": params.batch_size,
        "resources": dict(params.resources),
    }


TRAIN = OpSpec(
    name="train_pixel_classifier",
    version="1",
    params=TrainParams,
    kind=lambda p: "blockwise",
    halo=lambda p, ctx: (p.features().halo(),) * len(ctx.spacing),
    dtype=lambda p, dtype: np.dtype(np.float32),
    apply=train_features,
    apply_cropped=train_features_cropped,
    artifact="model",
    doc="Random forest on multiscale pixel features of the annotated voxels in the ROI; "
    "writes the model artifact `_engine/models/<model>/`.",
)

PREDICT = OpSpec(
    name="predict_pixel_classifier",
    version="1",
    params=PredictParams,
    kind=lambda p: "blockwise",
    halo=done_by_engine("the halo of 'predict_pixel_classifier' comes from its model artifact"),
    dtype=lambda p, dtype: np.dtype(np.float32),
    apply=done_by_engine("the engine runs 'predict_pixel_classifier' as op 'model'"),
    doc="Probability of one class (float32) by a trained pixel classifier, run as op 'model'.",
)
