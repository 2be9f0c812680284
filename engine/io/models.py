"""Model artifacts in the image's zarr, and the predict steps that use them.

A trained model lives at `_engine/models/<name>/`: a zarr group whose `ngff_engine`
attributes hold the usual output record (config hash, provenance, runs) plus `model`
(the file's name and sha256, estimator, feature settings, halo, classes, sample
counts), with the model file itself (joblib) in the group's folder. The engine owns the
folder; users see the artifact through `ngff-engine info`.

Predict steps name a model; the compiler turns each into an `op: model` step with the
artifact's factory, file, version and halo (`model_steps`), so prediction runs through
the same interface as any user model and the plan records which model version it used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import zarr

from engine.core.errors import ConfigError
from engine.core.pipeline import Pipeline, Step
from engine.io.location import Location
from engine.io.ngff_write import GROUP_OF_KIND, engine_attrs, output_path

if TYPE_CHECKING:
    from tasks.classifier import TrainedClassifier

MODELS = GROUP_OF_KIND["model"]


def model_path(name: str) -> str:
    return output_path("model", name)


def trained_models(image: str | Path | Location) -> list[str]:
    return Location.parse(image).list_dirs(MODELS)


def model_info(image: str | Path | Location, name: str) -> dict[str, Any] | None:
    """The artifact's `model` attributes, or None when there is no such model."""
    try:
        where = Location.parse(image).child(model_path(name))
        group = zarr.open_group(where.zarr_url(), mode="r")
    except (FileNotFoundError, zarr.errors.BaseZarrError):
        return None
    info = engine_attrs(group).get("model")
    return dict(info) if isinstance(info, dict) else None


def model_steps(pipeline: Pipeline, image: str | Location) -> dict[str, Step]:
    """Each predict step as the `op: model` step that runs it, by step name."""
    expanded = {}
    for step in pipeline.steps:
        if step.op != "predict_pixel_classifier":
            continue
        params = step.typed_params()
        info = model_info(image, params.model)
        if info is None:
            known = ", ".join(trained_models(image)) or "none"
            raise ConfigError(
                f"step '{step.name}': params.model: no trained model '{params.model}' in "
                f"{image}/{MODELS} (trained: {known}); run a train_pixel_classifier step first"
            )
        where = Location.parse(image)
        if not where.is_local:
            raise ConfigError(
                f"step '{step.name}': params.model: models are read from a local image or "
                f"output store; {where} is remote"
            )
        file = str(where.local_path.absolute() / model_path(params.model) / info["file"])
        from tasks.classifier import model_op_params  # with the classifier's ops

        try:
            op_params = model_op_params(params, file, info)
        except ValueError as exc:
            raise ConfigError(f"step '{step.name}': params.foreground: {exc}") from None
        expanded[step.name] = step.model_copy(update={"op": "model", "params": op_params})
    return expanded


def model_version(step: Step) -> dict[str, Any]:
    """What identifies the model an expanded step runs, for its outputs' provenance."""
    kwargs = step.params["kwargs"]
    return {"file": Path(kwargs["path"]).name, "sha256": kwargs["sha256"]}


def write_model(
    image: str | Location, root: zarr.Group, path: str, trained: TrainedClassifier
) -> dict[str, Any]:
    """Replace the artifact group at `path` with this model; return its `model` record.
    The model file is written locally only (workers load it by path)."""
    from tasks.classifier import MODEL_FILE, save_classifier

    where = Location.parse(image)
    if not where.is_local:
        raise ConfigError(f"{where}: a trained model is written to a local image or output store")
    root.create_group(path, overwrite=True)
    sha256 = save_classifier(trained, where.local_path / path / MODEL_FILE)
    return {"file": MODEL_FILE, "format": "joblib", "sha256": sha256, **trained.info()}
