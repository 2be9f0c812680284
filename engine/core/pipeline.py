"""Pipelines as data: steps, their inputs and outputs, and named ROIs.

One model serves YAML and Python: `Pipeline.from_yaml(path)` and building it in
code give the same object, and `to_yaml()` round-trips. Everything that can be
checked without the image is checked here, so a broken config fails before
anything runs and the message names the step and field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.core.errors import ConfigError
from engine.core.sizes import IN_PROCESS_MAX
from engine.core.step_graph import StepGraph
from tasks import OPS

IMAGE = "image"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# a parameter naming user code (`op: function`'s function, `op: model`'s model, a
# segmenter): the module is imported by the driver and every worker
USER_CODE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")
AXES = ("t", "c", "z", "y", "x")
# parameters that name another step: must it be one (True), or may it name a label image?
STEP_PARAMS = {"intensity": True, "reference": False}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoiSpec(_Model):
    """A box by axis name, in pixels of `level` or in a physical unit; absent axes are whole.

    `origin` says where physical coordinates start: "world" (the default for config ROIs)
    in the image's coordinate system, its translation included, keeping the voxels whose
    positions fall inside; "image" as ngio and Fractal ROI tables are, from the image's
    own first voxel (the translation not applied), rounded outwards as ngio rounds."""

    units: str = "pixel"
    level: int = Field(default=0, ge=0)
    origin: Literal["world", "image"] = "world"
    preview: bool = False  # a run over more than this ROI computes its chunks first
    t: tuple[float, float] | None = None
    c: tuple[float, float] | None = None
    z: tuple[float, float] | None = None
    y: tuple[float, float] | None = None
    x: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> RoiSpec:
        for axis in AXES:
            bounds = getattr(self, axis)
            if bounds is not None and bounds[1] <= bounds[0]:
                raise ValueError(f"{axis}: stop {bounds[1]} is not after start {bounds[0]}")
        if all(getattr(self, a) is None for a in AXES):
            raise ValueError("an ROI needs at least one axis range")
        return self

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {a: getattr(self, a) for a in AXES if getattr(self, a) is not None}


class InputRef(_Model):
    source: str
    channel: int | None = Field(default=None, ge=0)
    level: int = Field(default=0, ge=0)


VERSIONS = ("keep",)


class OutputSpec(_Model):
    """Where a step's result goes. `shards` (zarr v3 / NGFF 0.5 only): the shard shape in
    voxels per work axis (the image's axes without c), a multiple of the chunks; tasks
    writing the output are grouped per shard, so no two write one shard at once.
    `versions: keep`: a run with another step config writes a new version beside the
    old ones (`name`, `name.v2`, ...) instead of refusing; see engine/plan/versions.py."""

    kind: Literal["label", "image", "table"]
    name: str
    shards: tuple[PositiveInt, ...] | None = None
    versions: str | None = None

    @field_validator("versions")
    @classmethod
    def _known_versions(cls, versions: str | None) -> str | None:
        if versions is not None and versions not in VERSIONS:
            raise ValueError(f"'{versions}' is not allowed (allowed: {', '.join(VERSIONS)})")
        return versions

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not NAME.match(name):
            raise ValueError(f"'{name}' is not a plain name (letters, digits, '_', '.', '-')")
        return name


class Step(_Model):
    name: str
    op: str
    input: str | InputRef = IMAGE
    params: dict[str, Any] = Field(default_factory=dict)
    output: OutputSpec | None = None
    # a reduction (a threshold's Otsu) over more than the run's region: "plate" (every
    # image of a collection run), "image" (every ROI of an image's ROI table); see
    # engine/runs/reduce_over.py. None: over the run's region (an image, an ROI)
    reduce_over: Literal["plate", "image"] | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not NAME.match(name) or name == IMAGE:
            raise ValueError(f"'{name}' is not a usable step name")
        return name

    @field_validator("op")
    @classmethod
    def _known_op(cls, op: str) -> str:
        if op not in OPS:
            raise ValueError(f"unknown op '{op}' (known: {', '.join(sorted(OPS))})")
        return op

    @model_validator(mode="after")
    def _params_fit_op(self) -> Step:
        try:
            OPS[self.op].params.model_validate(self.params)
        except ValidationError as exc:
            raise ValueError(_params_error(exc, self.op)) from None
        return self

    @property
    def source(self) -> str:
        return self.input if isinstance(self.input, str) else self.input.source

    @property
    def input_ref(self) -> InputRef:
        return self.input if isinstance(self.input, InputRef) else InputRef(source=self.input)

    def extra_inputs(self) -> dict[str, str]:
        """Names read through parameters, by field: a measure step's `intensity` (a step),
        an evaluate step's `reference` (a step, or else a label image in the zarr)."""
        found = {}
        for key in STEP_PARAMS:
            value = self.params.get(key)
            if isinstance(value, str) and value != IMAGE:
                found[f"params.{key}"] = value
        return found

    def writes(self) -> tuple[str, str] | None:
        """What the step writes, as (kind, name): its `output:`, or for an op that trains a
        model the artifact `params.model` (kind "model"); None if it writes nothing."""
        if OPS[self.op].artifact == "model":
            return "model", self.typed_params().model
        return (self.output.kind, self.output.name) if self.output is not None else None

    def config(self) -> dict[str, Any]:
        """The step as provenance records it: what decides its result. Whether old
        versions are kept does not, so `output.versions` is left out."""
        return self.model_dump(mode="json", exclude={"output": {"versions"}})

    def typed_params(self) -> Any:
        return OPS[self.op].params.model_validate(self.params)


MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*([kmgtp]i?b?|b)?\s*$", re.IGNORECASE)
WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h)$")
SPAN_SECONDS = {"s": 1, "m": 60, "h": 3600}


def duration_seconds(text: str) -> float:
    """Seconds in a SLURM time (`minutes`, `minutes:seconds`, `hours:minutes:seconds`,
    `days-hours[:minutes[:seconds]]`) or a span such as `90s`, `55m`, `2h`."""
    text = text.strip()
    span = SPAN.match(text)
    if span:
        return float(span.group(1)) * SPAN_SECONDS[span.group(2)]
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:  # hours:minutes:seconds
        hours, minutes, seconds = parts
    else:  # minutes[:seconds]
        hours, minutes, seconds = 0, parts[0], sum(parts[1:])
    return float(((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds)


class ClusterSpec(_Model):
    """Where a run's dask workers come from: the YAML `cluster:` section and the CLI flags.

    `kind: local` is a LocalCluster on this machine; `kind: slurm` runs each dask worker
    in a SLURM job (dask-jobqueue's SLURMCluster), `jobs` of them, or between `min_jobs`
    and `max_jobs` adaptively. `cores`, `memory`, `processes` are per job. The same fields
    describe the one allocation of `ngff-engine submit` (batch mode): `jobs` worker tasks
    of `cores` CPUs and `memory` each, plus one task for the scheduler and one for the driver.
    """

    kind: Literal["local", "slurm"] = "local"
    partition: str | None = Field(default=None, validation_alias=AliasChoices("partition", "queue"))
    account: str | None = None
    cores: int = Field(default=1, ge=1)
    memory: str = "2GiB"
    processes: int = Field(default=1, ge=1)
    walltime: str = "01:00:00"
    job_extra_directives: tuple[str, ...] = ()
    python: str | None = None
    job_name: str = "ngff-engine"
    log_directory: str | None = None
    jobs: int | None = Field(default=None, ge=1)
    min_jobs: int | None = Field(default=None, ge=0)
    max_jobs: int | None = Field(default=None, ge=1)
    interface: str | None = None
    tls: bool = True  # per-run certificates, local and SLURM; see engine/execute/cluster.py
    # where a local run's dask dashboard listens: this machine only unless asked otherwise
    dashboard: str = "127.0.0.1:0"
    shared_directory: str | None = None
    template: str | None = None
    lifetime: str | None = None  # adaptive mode: a worker retires after this; see slurm.py
    # a local run whose plan reads at most this much runs on threads of the command's own
    # process, no worker processes started (engine/execute/placement.py); "0": never.
    # Measured on 2 cores, three pairs in turn under other load: the 4x64x512x512 time
    # series (256 MiB of float32 read) took 8.5-9.0 s in process against 10.2-10.8 s
    # with two worker processes; threads ran 1.3-1.5x the work of one, processes ~1.9x,
    # so processes win once their 1-2 s start is less than that difference: from about
    # 512 MiB read (the 256x1024x1024 standard volume reads 1 GiB)
    in_process_max: str = IN_PROCESS_MAX

    @field_validator("memory", "in_process_max")
    @classmethod
    def _memory(cls, memory: str) -> str:
        if not MEMORY.match(memory):
            raise ValueError(f"'{memory}' is not a memory size such as 4GiB or 500MB")
        return memory.strip()

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, walltime: str) -> str:
        if not WALLTIME.match(walltime.strip()):
            raise ValueError(f"'{walltime}' is not a SLURM time such as 01:00:00 or 1-00:00:00")
        return walltime.strip()

    @field_validator("lifetime")
    @classmethod
    def _lifetime(cls, lifetime: str | None) -> str | None:
        if lifetime is None:
            return None
        if not (WALLTIME.match(lifetime.strip()) or SPAN.match(lifetime.strip())):
            raise ValueError(f"'{lifetime}' is not a duration such as 00:55:00, 55m or 30s")
        if duration_seconds(lifetime) <= 0:
            raise ValueError(f"'{lifetime}' is not a positive duration")
        return lifetime.strip()

    @field_validator("job_name")
    @classmethod
    def _job_name(cls, name: str) -> str:
        if not NAME.match(name):
            raise ValueError(f"'{name}' is not a plain name (letters, digits, '_', '.', '-')")
        return name

    @model_validator(mode="after")
    def _sizes(self) -> ClusterSpec:
        if self.processes > self.cores:
            raise ValueError(f"processes ({self.processes}) cannot exceed cores ({self.cores})")
        adaptive = self.min_jobs is not None or self.max_jobs is not None
        if self.jobs is not None and adaptive:
            raise ValueError("give either jobs (fixed size) or min_jobs/max_jobs (adaptive)")
        low, high = self.min_jobs or 0, self.max_jobs
        if self.min_jobs is not None and high is None:
            raise ValueError("min_jobs needs max_jobs (adaptive mode scales between them)")
        if high is not None and low > high:
            raise ValueError(f"min_jobs ({low}) is above max_jobs ({high})")
        if self.lifetime is not None:
            if not adaptive:
                raise ValueError(
                    "lifetime needs adaptive mode (min_jobs/max_jobs): only there is a "
                    "retired worker job replaced"
                )
            if duration_seconds(self.lifetime) >= duration_seconds(self.walltime):
                raise ValueError(
                    f"lifetime ({self.lifetime}) must be shorter than walltime "
                    f"({self.walltime}): workers retire before SLURM ends their jobs"
                )
        return self

    @property
    def adaptive(self) -> bool:
        return self.min_jobs is not None or self.max_jobs is not None


class Pipeline(_Model):
    # an image, a plate, a well, a glob, or a list of images (engine/io/plates.py)
    input: str | list[str] | None = None
    # where outputs and run state go when not into the image (a path or URL); see
    # engine/io/location.py
    output_store: str | None = None
    # fsspec options for remote input and output (e.g. S3 endpoint_url, key, secret, anon)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    rois: dict[str, RoiSpec] = Field(default_factory=dict)
    # run once per ROI of this ROI table of each image (engine/runs/units.py)
    roi_table: str | None = None
    steps: tuple[Step, ...] = ()
    cluster: ClusterSpec | None = None

    @model_validator(mode="after")
    def _graph_is_sound(self) -> Pipeline:
        names = [s.name for s in self.steps]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"step names must be unique; repeated: {', '.join(duplicates)}")
        known = set(names) | {IMAGE}
        for step in self.steps:
            if step.source not in known:
                raise ValueError(
                    f"step '{step.name}': input '{step.source}' is no step and not 'image'"
                )
            for field, name in step.extra_inputs().items():
                if name not in known and STEP_PARAMS[field.removeprefix("params.")]:
                    raise ValueError(
                        f"step '{step.name}': {field} '{name}' is no step and not 'image'"
                    )
            if step.source != IMAGE and isinstance(step.input, InputRef):
                if step.input.channel is not None or step.input.level != 0:
                    raise ValueError(
                        f"step '{step.name}': channel and level apply to 'image' inputs only"
                    )
        cycle = self.graph().cycle()
        if cycle is not None:
            raise ValueError(f"steps form a cycle: {' -> '.join(cycle)}")
        outputs = [(s.output.kind, s.output.name) for s in self.steps if s.output]
        repeated = sorted({f"{k}/{n}" for k, n in outputs if outputs.count((k, n)) > 1})
        if repeated:
            raise ValueError(f"two steps write the same output: {', '.join(repeated)}")
        return self

    def user_code(self) -> list[str]:
        """Every `module:function` the steps name, in step order: the code a run imports
        and executes (a config is code; `validate` lists these)."""
        found: list[str] = []
        for step in self.steps:
            params = step.typed_params()
            for name in type(params).model_fields:
                value = getattr(params, name)
                if isinstance(value, str) and USER_CODE.match(value) and value not in found:
                    found.append(value)
        return found

    def check_complete(self) -> None:
        """A pipeline ready to run: it has steps, and every step's result is used.

        Not a validator, so that a pipeline can be built one `add` at a time.
        """
        if not self.steps:
            raise ConfigError("the pipeline has no steps")
        graph = self.graph()
        for step in self.steps:
            if step.writes() is None and graph.readers(step.name) == 0:
                raise ConfigError(f"step '{step.name}': has no output and no step uses it")

    def graph(self) -> StepGraph:
        nodes = [IMAGE, *(step.name for step in self.steps)]
        edges = [(step.source, step.name) for step in self.steps]
        for step in self.steps:
            edges += [(n, step.name) for n in step.extra_inputs().values() if n in nodes]
        return StepGraph(nodes, edges)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def ordered_steps(self) -> list[Step]:
        order = [n for n in self.graph().order() if n != IMAGE]
        return [self.step(n) for n in order]

    def upstream(self, name: str) -> list[Step]:
        """The step and every step it depends on, in execution order."""
        needed = self.graph().ancestors(name) | {name}
        return [s for s in self.ordered_steps() if s.name in needed]

    def add(
        self,
        name: str,
        op: str,
        input: str | InputRef = IMAGE,
        output: OutputSpec | dict[str, str] | None = None,
        **params: Any,
    ) -> Pipeline:
        """A new pipeline with one more step: the Python way to build what YAML declares."""
        step = {"name": name, "op": op, "input": input, "params": params, "output": output}
        return Pipeline.build({**self.model_dump(), "steps": [*self.model_dump()["steps"], step]})

    def with_roi(self, name: str, **spec: Any) -> Pipeline:
        return Pipeline.build(
            {**self.model_dump(), "rois": {**self.model_dump()["rois"], name: spec}}
        )

    @classmethod
    def build(cls, data: Any, source: str = "pipeline") -> Pipeline:
        """Validate plain data into a Pipeline, turning pydantic errors into one clear line."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"{source}: expected a mapping with 'steps', got {type(data).__name__}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_first_error(exc, data=data)}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
        return cls.build(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _params_error(exc: ValidationError, op: str) -> str:
    """An unknown parameter is named first (a typo also makes its real name 'missing')."""
    unknown = [e for e in exc.errors() if e["type"] == "extra_forbidden"]
    if unknown:
        names = ", ".join(".".join(str(p) for p in e["loc"]) for e in unknown)
        known = ", ".join(sorted(OPS[op].params.model_fields))
        return f"params.{names}: unknown parameter for op '{op}' (known: {known})"
    return _first_error(exc, prefix="params")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one line: where, then what."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if problem is None:
        return " ".join(str(exc).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(f"{problem}{f' ({context})' if context else ''}".split())


def _union_tag(part: Any) -> bool:
    """pydantic names the member of a union in `loc` ('float', 'list[float]', ...): not a field."""
    return isinstance(part, str) and (
        not part.isidentifier() or part in ("float", "int", "str", "bool", "dict", "list")
    )


def _first_error(exc: ValidationError, prefix: str = "", data: Any = None) -> str:
    """One line from pydantic's list: where (step name where there is one) and what."""
    error = exc.errors()[0]
    loc = list(error.get("loc", ()))
    where = []
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        index = loc[1]
        steps = data.get("steps") if isinstance(data, dict) else None
        name = (
            steps[index].get("name")
            if isinstance(steps, list | tuple)
            and index < len(steps)
            and isinstance(steps[index], dict)
            else None
        )
        where.append(f"step '{name}'" if name else f"steps[{index}]")
        loc = loc[2:]
    elif len(loc) >= 2 and loc[0] == "rois":
        where.append(f"roi '{loc[1]}'")
        loc = loc[2:]
    loc = [p for i, p in enumerate(loc) if i == 0 or not _union_tag(p)]
    field = ".".join(str(p) for p in ([prefix] if prefix else []) + loc)
    message = error["msg"].removeprefix("Value error, ")
    head = ": ".join(where + ([field] if field else []))
    return f"{head}: {message}" if head else message
