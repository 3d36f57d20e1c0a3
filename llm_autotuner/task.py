"""The task file: what to tune, how to load it, what to optimise. Validated before anything starts.

A task is YAML (JSON is YAML too). Any problem becomes a `TaskError` whose message is one line
naming the field, e.g. `search_space.threads.min: must be below max (4 >= 2)`.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
import types
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      field_validator, model_validator)

from llm_autotuner.errors import TaskError
from llm_autotuner.metrics import METRICS, OBJECTIVE_METRICS, SLO_METRICS
from llm_autotuner.objective import Limit

Scalar = Union[bool, int, float, str]

# A value becomes one argv element after a flag. It must not look like a flag itself or carry
# whitespace or control characters, so a task value can never smuggle in another flag.
_SAFE_VALUE = re.compile(r"^[^\s\-\x00-\x1f][^\s\x00-\x1f]*$")
_FLAG_NAME = re.compile(r"^-{0,2}[A-Za-z][A-Za-z0-9_-]*$")
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# genai-bench's text-to-text scenarios, as its own patterns accept them (genai_bench/scenarios/text.py).
_SCENARIO = re.compile(r"^(D\(\d+,\d+\)|N\(\d+,\d+\)/\(\d+,\d+\)|U\(\d+,\d+\)(/\(\d+,\d+\))?)$")
_SECRET_ENV = re.compile(r"TOKEN|API[_-]?KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def _no_secrets(values: dict[str, str]) -> dict[str, str]:
    for name in values:
        if _SECRET_ENV.search(name):
            raise ValueError(f"{name} looks like a secret, and the task file is copied into the results; export it "
                             "where autotuner runs (local engines inherit it) or use a Kubernetes Secret (OME)")
    return values


def check_value(value: Scalar) -> Scalar:
    if isinstance(value, str) and (not _SAFE_VALUE.match(value) or "{{" in value or "}}" in value):
        # '{{' too: OME's controller runs Go templating over the engine's args.
        raise ValueError(f"value {value!r} is not allowed (no leading '-', spaces, control characters or '{{{{')")
    return value


def check_flag_name(name: str) -> str:
    if not _FLAG_NAME.match(name):
        raise ValueError(f"{name!r} is not a flag name (letters, digits, '-' and '_')")
    return name


class _Strict(BaseModel):
    # No NaN or infinity anywhere (YAML's .nan and .inf): no range, limit or weight means anything with one.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_true_for_a_number(cls, data: Any) -> Any:
        # pydantic reads true as 1 for a number: `num_samples: true` would run one trial.
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(name, str) else None
                if field is None:
                    continue
                if isinstance(value, bool) and _is_number(field.annotation):
                    raise ValueError(f"{name}: {str(value).lower()} is not a number")
                if isinstance(value, list) and _is_number_list(field.annotation):
                    for item in value:
                        if isinstance(item, bool):
                            raise ValueError(f"{name}: {str(item).lower()} is not a number")
        return data


def _is_number(annotation: Any) -> bool:
    """Whether a field takes an int or a float (maybe optional or annotated) and not a boolean."""
    if get_origin(annotation) is Annotated:
        return _is_number(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return bool(members) and all(_is_number(a) for a in members)
    return annotation in (int, float)


def _is_number_list(annotation: Any) -> bool:
    """Whether a field takes a list of numbers (maybe optional or annotated)."""
    if get_origin(annotation) is Annotated:
        return _is_number_list(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_is_number_list(a) for a in get_args(annotation) if a is not type(None))
    return get_origin(annotation) is list and _is_number(get_args(annotation)[0])


class IntRange(_Strict):
    """An integer range: min..max inclusive, or min, min + step, ..., max; optionally on a log scale."""

    type: Literal["int"]
    min: int
    max: int
    step: int | None = Field(default=None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> "IntRange":
        _check_range(self.min, self.max, self.log, self.step)
        return self

    def values(self) -> list[int]:
        return list(range(self.min, self.max + 1, self.step or 1))

    def count(self) -> int:  # without listing them: min 1, max 1e9 is a fine random-search range
        return (self.max - self.min) // (self.step or 1) + 1

    def holds(self, value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and self.min <= value <= self.max
                and (value - self.min) % (self.step or 1) == 0)


class FloatRange(_Strict):
    """A float range: continuous (uniform or on a log scale), or min, min + step, ..., max."""

    type: Literal["float"]
    min: float
    max: float
    step: float | None = Field(default=None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> "FloatRange":
        _check_range(self.min, self.max, self.log, self.step)
        return self

    def values(self) -> list[float] | None:
        """The stepped range's values (None for a continuous one), computed in decimal as written,
        so 0.1 steps give 0.3 and not 0.30000000000000004."""
        if self.step is None:
            return None
        low, step = _decimal(self.min), _decimal(self.step)
        count = (_decimal(self.max) - low) / step
        return [float(low + k * step) for k in range(int(count) + 1)]

    def count(self) -> int | None:
        return None if self.step is None else int((_decimal(self.max) - _decimal(self.min)) / _decimal(self.step)) + 1

    def holds(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        return value in self.values() if self.step is not None else self.min <= value <= self.max


def given_values(domain: Any) -> list[Any]:
    """The values a task gives a flag, as far as they can be checked one by one: a fixed value,
    each choice, or a range's two ends (a range holds numbers only, all between its ends)."""
    if isinstance(domain, list):
        return domain
    if isinstance(domain, (IntRange, FloatRange)):
        return [domain.min, domain.max]
    return [domain]


# A stepped range becomes one choice per value (tuner/space.py); HyperOpt slows with the count
# (measured: 1.4 s for 30 suggestions over 1,000 values, 43 s over 20,000).
MAX_STEPPED_VALUES = 10_000


def _decimal(number: float) -> Decimal:
    # The shortest repr is what the task file said (0.1, not 0.1000000000000000055...).
    return Decimal(repr(number))


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    """The one rule every searcher follows (tuner/space.py): a stepped range's values are min,
    min + step, ..., max, so max - min must be a whole number of steps."""
    if low >= high:
        raise ValueError(f"min must be below max ({low} >= {high})")
    if log and low <= 0:
        raise ValueError(f"a log range needs min > 0 (got {low})")
    if step is None:
        return
    if log:
        raise ValueError("step and log: true together are not supported (a stepped range is evenly spaced); "
                         "list log-spaced values as choices, e.g. [64, 128, 256, 512]")
    if step > high - low:
        raise ValueError(f"step {step} is larger than the range {low}..{high}")
    # The count first, in floats: a decimal remainder of a quotient beyond its precision (1e-30
    # steps) raises instead of answering.
    count = math.floor((high - low) / step) + 1
    if count > MAX_STEPPED_VALUES:
        shown = str(count) if count < 10**9 else f"about {float(count):.1e}"
        raise ValueError(f"{shown} values from min to max in steps of {step}; a stepped range may hold at most "
                         f"{MAX_STEPPED_VALUES}: take a larger step, or leave step out")
    span = _decimal(high) - _decimal(low)
    if span % _decimal(step):
        raise ValueError(f"max - min ({span}) is not a multiple of step ({step})")


def _check_choices(values: list[Scalar]) -> list[Scalar]:
    if len(set(map(repr, values))) != len(values):
        raise ValueError(f"repeated choices {values}")
    return values


SafeScalar = Annotated[Scalar, AfterValidator(check_value)]
FlagName = Annotated[str, AfterValidator(check_flag_name)]
Range = Annotated[Union[IntRange, FloatRange], Field(discriminator="type")]
Choices = Annotated[list[SafeScalar], Field(min_length=1), AfterValidator(_check_choices)]
# A list is a set of choices, a mapping is a range; anything else is neither.
Domain = Annotated[
    Union[Annotated[Choices, Tag("choices")], Annotated[Range, Tag("range")]],
    Discriminator(lambda v: "choices" if isinstance(v, list) else "range" if isinstance(v, dict) else None,
                  custom_error_type="domain", custom_error_message=
                  "must be a list of choices or a range such as {type: int, min: 1, max: 8}"),
]


class Model(_Strict):
    path: str | None = Field(default=None, description="model file or directory, a hub id, or "
                             "'builtin:smollm2'; on OME the controller mounts the model instead")
    name: str | None = Field(default=None, description="served model name; default from the path")
    tokenizer: str | None = Field(default=None, description="Hugging Face tokenizer for genai-bench")


class Engine(_Strict):
    # Checked against the engine profiles (cluster/engines.py), which this layer cannot import.
    name: str = Field(description="llama.cpp, sglang or vllm")
    binary: str | None = Field(default=None, description="llama-server path; default: found or built")
    args: dict[FlagName, SafeScalar] = Field(default_factory=dict, description="flags every trial gets")
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _no_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        return _no_secrets(env)


class LocalDeployment(_Strict):
    """The engine runs as a process on the trial's Ray node."""

    backend: Literal["local"] = "local"
    ready_timeout_s: float = Field(default=300.0, gt=0)


K8sName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)]


class RuntimeToCreate(_Strict):
    """A ClusterServingRuntime the tuner creates (and leaves in place) when it does not exist."""

    image: str
    model_architecture: str | None = None
    command: list[str] = Field(default_factory=lambda: ["python3", "-m", "sglang.launch_server", "--host",
                                                        "0.0.0.0", "--port", "8080", "--model-path",
                                                        "$(MODEL_PATH)"])


class OmeDeployment(_Strict):
    """One OME InferenceService per trial on Kubernetes."""

    backend: Literal["ome"]
    namespace: K8sName
    model: K8sName = Field(description="the ClusterBaseModel/BaseModel name (spec.model.name)")
    runtime: K8sName = Field(description="the (Cluster)ServingRuntime name (spec.runtime.name)")
    gpu_budget: int = Field(ge=1, description="GPUs the trials may hold at once, all together")
    endpoint: Literal["auto", "in-cluster", "port-forward", "status-url"] = "auto"
    port: int = Field(default=8080, ge=1, le=65535)
    kubeconfig: str | None = None
    context: str | None = None
    ready_timeout_s: float = Field(default=1800.0, gt=0)
    unschedulable_grace_s: float = Field(default=300.0, ge=0)
    command: list[SafeScalar] | None = Field(default=None, description="replace the runtime's command")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    create_runtime: RuntimeToCreate | None = None

    @field_validator("env", "annotations")
    @classmethod
    def _no_secrets(cls, values: dict[str, str]) -> dict[str, str]:
        return _no_secrets(values)  # they go into every InferenceService and the kuberay ConfigMap too


Deployment = Annotated[
    Union[Annotated[LocalDeployment, Tag("local")], Annotated[OmeDeployment, Tag("ome")]],
    Discriminator(lambda v: v.get("backend", "local") if isinstance(v, dict) else getattr(v, "backend", None),
                  custom_error_type="backend", custom_error_message="backend must be 'local' or 'ome'"),
]


class BenchmarkJobSettings(_Strict):
    """Where an OME BenchmarkJob writes and where the driver reads the same files."""

    output_storage_uri: str = Field(pattern=r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$",
                                    description="pvc://CLAIM/path the job writes to")
    results_mount: str = Field(description="where that PVC path is mounted in the driver's pod")
    image: str | None = None
    timeout_s: float = Field(default=3600.0, gt=0)


# Hard limits a task has unless its slos set their own: a config that fails requests, or answers
# shorter than asked, must not win on the throughput of what it did answer.
DEFAULT_LIMITS = {"error_rate": 0.05, "truncated_fraction": 0.0}


class Benchmark(_Strict):
    traffic_scenario: str = "D(100,64)"
    concurrency: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [1, 4, 8]
    max_requests_per_stage: int = Field(default=16, ge=1)
    max_minutes_per_stage: int = Field(default=1, ge=1, description="genai-bench takes whole minutes")
    stage_timeout_s: float = Field(default=300.0, gt=0, description="deadline for one stage (default: 300 s, "
                                   "or max_minutes_per_stage + 2 minutes if longer)")
    api_backend: Literal["openai", "sglang", "vllm"] | None = None
    runner: Literal["direct", "benchmarkjob"] = Field(
        default="direct", description="direct: genai-bench from the trial; benchmarkjob: an OME BenchmarkJob")
    benchmark_job: BenchmarkJobSettings | None = None
    client_cpus: float = Field(default=1.0, ge=0, description="CPUs genai-bench uses, added to each trial's claim")
    warmup_requests: int | None = Field(default=None, ge=0, description="requests sent before the first stage and "
                                        "not measured (default: the highest concurrency; 0: none)")
    stage_weights: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None, description="each stage's weight in the objective (default: equal)")

    @model_validator(mode="before")
    @classmethod
    def _deadline_after_the_longest_stage(cls, data: Any) -> Any:
        minutes = data.get("max_minutes_per_stage") if isinstance(data, dict) else None
        if isinstance(minutes, int) and "stage_timeout_s" not in data:
            # A stage bounded by time runs its minutes, then drains the requests still out.
            data = data | {"stage_timeout_s": max(300.0, 60.0 * minutes + 120.0)}
        return data

    @model_validator(mode="after")
    def _a_stage_can_finish_before_its_deadline(self) -> "Benchmark":
        if self.runner == "direct" and self.stage_timeout_s <= 60 * self.max_minutes_per_stage:
            raise ValueError(f"stage_timeout_s ({self.stage_timeout_s:g} s) must be longer than a stage may run "
                             f"(max_minutes_per_stage {self.max_minutes_per_stage} = "
                             f"{60 * self.max_minutes_per_stage} s, then its last answers): every trial would fail "
                             f"at its deadline; set it to {60 * self.max_minutes_per_stage + 120} or leave it out")
        return self

    @model_validator(mode="after")
    def _weights_per_stage(self) -> "Benchmark":
        if self.stage_weights is not None and len(self.stage_weights) != len(self.concurrency):
            raise ValueError(f"stage_weights: {len(self.stage_weights)} weights for {len(self.concurrency)} stages")
        return self

    @field_validator("traffic_scenario")
    @classmethod
    def _scenario(cls, value: str) -> str:
        if not _SCENARIO.match(value):
            raise ValueError(f"{value!r} is not a genai-bench text scenario: D(in,out), N(in_mean,in_sd)/(out_mean,out_sd), "
                             "U(in_max,out_max) or U(in_min,in_max)/(out_min,out_max), whole token counts, no spaces")
        return value

    @field_validator("concurrency")
    @classmethod
    def _rising(cls, values: list[int]) -> list[int]:
        if len(set(values)) != len(values):
            raise ValueError(f"each stage needs its own concurrency (got {values})")
        return values


class Slo(_Strict):
    """`limit` alone is a hard SLO; `hard: false` makes it a penalty instead (README, Objectives)."""

    limit: float = Field(gt=0)
    hard: bool = True


# A number is a hard limit; a mapping is an Slo.
def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic would read true as a limit of 1
        raise ValueError(f"{str(value).lower()} is not a limit; give a number (or {{limit: N, hard: false}})")
    return value


SloValue = Annotated[
    Union[Annotated[float, Field(gt=0), Tag("limit")], Annotated[Slo, Tag("slo")]],
    Discriminator(lambda v: "slo" if isinstance(v, (dict, Slo)) else "limit"),
    BeforeValidator(_not_a_bool),
]


def _among(value: Any, choices: list) -> bool:
    """`value in choices`, where true is not 1 (Python's `True in [1, 2]` holds)."""
    return any(value == choice and isinstance(value, bool) == isinstance(choice, bool) for choice in choices)


class Objective(_Strict):
    metric: str = Field(default="output_throughput", description="the primary objective: what the search optimises")
    secondary: list[str] = Field(default_factory=list,
                                 description="more objectives: the results list the Pareto front over all of them")

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        return _known_metric(value, OBJECTIVE_METRICS)

    @field_validator("secondary")
    @classmethod
    def _known_secondary(cls, values: list[str]) -> list[str]:
        for value in values:
            _known_metric(value, OBJECTIVE_METRICS)
        if len(set(values)) != len(values):
            raise ValueError(f"repeated objectives {values}")
        return values

    @model_validator(mode="after")
    def _secondary_differs(self) -> "Objective":
        if self.metric in self.secondary:
            raise ValueError(f"objective.secondary: {self.metric} is already the primary objective (objective.metric)")
        return self

    @property
    def metrics(self) -> list[str]:
        return [self.metric] + [m for m in self.secondary if m != self.metric]


SECRET_FLAGS = {"api-key", "hf-token", "token"}

SEARCHER_NAMES = ("hyperopt", "optuna", "random", "grid")
SCHEDULER_NAMES = ("asha", "hyperband", "median", "none")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _named_or_import_path(value: str, names: tuple[str, ...]) -> str:
    if value in names or _IMPORT_PATH.match(value):
        return value
    close = difflib.get_close_matches(value, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ValueError(f"unknown {value!r}; {hint}choose one of {', '.join(names)} or give package.module:Class")


class Search(_Strict):
    algorithm: Annotated[str, AfterValidator(lambda v: _named_or_import_path(v, SEARCHER_NAMES))] = "hyperopt"
    algorithm_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the searcher")
    num_samples: int = Field(default=12, ge=1, description="trials the searcher proposes")
    max_concurrent: int | None = Field(default=None, ge=1, description="default: what Ray's resources allow")
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)  # numpy's range, which the searchers seed
    scheduler: Annotated[str, AfterValidator(lambda v: _named_or_import_path(v, SCHEDULER_NAMES))] = "asha"
    scheduler_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the scheduler")
    grace_period: int = Field(default=1, ge=1, description="stages every trial runs before ASHA may stop it")
    reduction_factor: int = Field(default=2, ge=2)
    baseline: bool = Field(default=True, description="also measure the engine's defaults, never stopped")
    initial_points: list[dict[str, Scalar]] = Field(
        default_factory=list, description="configs to try first (each counts toward num_samples)")
    time_budget_s: float | None = Field(default=None, gt=0, description="stop the search after this long")
    # 2 x 3 rather than 3 x 2: about as many runs, the same winner in replays (docs/benchmarks.md),
    # and a t-test on 3 runs each tells apart configs twice as close as on 2 (README, point 6).
    confirm_top_k: int = Field(default=2, ge=0, le=100, description=(
        "after the search, re-measure this many best tuned configs (and the baseline, if measured)"))
    confirm_repeats: int = Field(default=3, ge=0, le=100, description="full-length re-measurements of each (0: none)")
    max_consecutive_failures: int = Field(default=5, ge=1,
                                          description="stop the run after this many failed trials in a row")
    patience: int | None = Field(default=None, ge=1,
                                 description="stop after this many finished trials in a row without a new best")


class Storage(_Strict):
    """Where trials put their files and Ray Tune its experiment state. The default, results_dir,
    is on the driver's disk: on a cluster of several machines give a folder every node mounts at
    the same path, or a URI (s3://, gs://), or a pyarrow filesystem."""

    path: str = Field(default="", description="a folder every node sees, or a URI such as s3://bucket/prefix; "
                                              "inside `filesystem` when that is given")
    filesystem: str | None = Field(default=None, description="package.module:callable returning a pyarrow "
                                   "filesystem (credentials from the environment, never in the task file)")

    @field_validator("filesystem")
    @classmethod
    def _import_path(cls, value: str | None) -> str | None:
        if value is not None and not _IMPORT_PATH.match(value):
            raise ValueError(f"{value!r} is not package.module:callable")
        return value

    @model_validator(mode="after")
    def _one_way_to_name_it(self) -> "Storage":
        if self.filesystem and "://" in self.path:
            raise ValueError("path: a URI names its own filesystem; with filesystem give a path inside it")
        return self


class Task(_Strict):
    name: str
    description: str | None = None
    model: Model
    engine: Engine
    deployment: Deployment = LocalDeployment()
    search_space: dict[FlagName, Domain]
    benchmark: Benchmark = Benchmark()
    objective: Objective = Objective()
    slos: dict[Annotated[str, AfterValidator(lambda m: _known_metric(m, SLO_METRICS))],
               SloValue] = Field(default_factory=dict)
    search: Search = Search()
    results_dir: str = "results"
    storage: Storage | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TASK_NAME.match(value):
            raise ValueError(f"{value!r} must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("search_space")
    @classmethod
    def _space(cls, space: dict) -> dict:
        if not space:
            raise ValueError("needs at least one parameter to tune")
        return space

    @model_validator(mode="after")
    def _backend_needs(self) -> "Task":
        local = isinstance(self.deployment, LocalDeployment)
        if local and not self.model.path:
            raise ValueError("model.path: required with the local backend")
        if self.benchmark.runner == "benchmarkjob":
            if local:
                raise ValueError("benchmark.runner: benchmarkjob needs deployment.backend: ome")
            if self.benchmark.benchmark_job is None:
                raise ValueError("benchmark.benchmark_job: required with runner: benchmarkjob")
        if not local and not self.model.tokenizer and self.benchmark.runner == "direct":
            raise ValueError("model.tokenizer: required with the ome backend (a hub id or a local folder)")
        if not local and not self.model.name:
            raise ValueError("model.name: required with the ome backend (the runtime's served model name)")
        return self

    @model_validator(mode="after")
    def _goodput_has_limits(self) -> "Task":
        if "goodput" in self.objective.metrics and not any(METRICS[m].request_field for m in self.slos):
            raise ValueError("objective: goodput counts the requests that met every latency SLO, but slos sets none; "
                             "add one, e.g. slos: {ttft_p90: 1.0}")
        return self

    @model_validator(mode="after")
    def _no_secret_flags(self) -> "Task":
        for where, names in (("engine.args", self.engine.args), ("search_space", self.search_space)):
            for name in names:
                if name.lstrip("-").replace("_", "-") in SECRET_FLAGS:
                    raise ValueError(f"{where}.{name}: a key in the task file would be copied into the results; "
                                     f"put it in the environment instead (see Secrets in the README)")
        return self

    @model_validator(mode="after")
    def _grid_is_discrete(self) -> "Task":
        if self.search.algorithm == "grid":
            try:
                grid_points(self.search_space)
            except TaskError as error:
                raise ValueError(str(error)) from None
        return self

    @model_validator(mode="after")
    def _initial_points_in_space(self) -> "Task":
        for number, point in enumerate(self.search.initial_points):
            for name, value in point.items():
                where = f"search.initial_points.{number}.{name}"
                domain = self.search_space.get(name)
                if domain is None:
                    raise ValueError(f"{where}: not a parameter of search_space")
                if not (_among(value, domain) if isinstance(domain, list) else domain.holds(value)):
                    # Between two steps is outside too, so a stepped range's values are named.
                    steps = domain.values() if not isinstance(domain, list) and domain.step else []
                    shown = steps if len(steps) <= 3 else [steps[0], steps[1], "...", steps[-1]]
                    listed = f" ({', '.join(map(str, shown))})" if steps else ""
                    raise ValueError(f"{where}: {value!r} is outside the search space{listed}")
            missing = set(self.search_space) - set(point)
            if missing:
                raise ValueError(f"search.initial_points.{number}: missing {', '.join(sorted(missing))}")
        return self

    @property
    def limits(self) -> list[Limit]:
        """The task's SLOs, and the limits every task has unless it sets its own (DEFAULT_LIMITS)."""
        given = [Limit(metric, slo, True) if isinstance(slo, (int, float)) else Limit(metric, slo.limit, slo.hard)
                 for metric, slo in self.slos.items()]
        return given + [Limit(metric, limit, True) for metric, limit in DEFAULT_LIMITS.items() if metric not in self.slos]

    @property
    def results_path(self) -> Path:
        return Path(self.results_dir) / self.name


def _axis(spec: Any) -> list | None:
    """A discrete parameter's values, in order; None for a float range without a step."""
    if isinstance(spec, list):
        return list(spec)
    if isinstance(spec, IntRange) or (isinstance(spec, FloatRange) and spec.step):
        return spec.values()
    return None


# A grid is listed whole before its first trial; past this many configs it would not finish anyway
# (at a minute per trial, 70 days) and the list alone could take the machine's memory.
MAX_GRID_POINTS = 100_000


def grid_points(search_space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of a discrete space, in a fixed order; a float range needs a step."""
    for name, spec in search_space.items():
        if _count(spec) is None:
            raise TaskError(f"search.algorithm: grid needs a discrete space, but search_space.{name} is a float "
                            "range without a step; give it choices or a step")
    size = space_size(search_space)
    if size > MAX_GRID_POINTS:
        raise TaskError(f"search.algorithm: grid over {size} configs (at most {MAX_GRID_POINTS}); "
                        "take larger steps or fewer choices, or search with hyperopt")
    axes = {name: _axis(spec) for name, spec in search_space.items()}
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def _count(spec: Any) -> int | None:
    return len(spec) if isinstance(spec, list) else spec.count()


def space_size(search_space: dict[str, Any]) -> int | None:
    """How many configs a space holds; None when a float range without a step makes it unbounded."""
    counts = [_count(spec) for spec in search_space.values()]
    return None if any(count is None for count in counts) else math.prod(counts)


def _known_metric(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed and value in METRICS and METRICS[value].maximize:
        raise ValueError(f"{value} is better when higher, and an SLO is an upper limit; make it the objective "
                         "instead, or limit a latency or error_rate")
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ValueError(f"unknown metric '{value}'; {hint}choose one of {', '.join(allowed)}")
    return value


def parse_task(data: Any, source: str = "task") -> Task:
    if not isinstance(data, dict):
        got = "an empty file" if data is None else "a list" if isinstance(data, list) else "a single value"
        raise TaskError(f"{source}: the task must be a mapping of keys to values (name: ..., model: ...), got {got}")
    try:
        return Task.model_validate(data)
    except ValidationError as error:
        raise TaskError(f"{source}: {_one_line(error)}") from None


def load_task(path: str | Path, search_overrides: dict[str, Any] | None = None) -> Task:
    """Read and validate a task file (with `search` keys overridden, e.g. from the command line);
    raise TaskError with a one-line message on any problem."""
    data = read_task_file(path)
    if search_overrides and isinstance(data, dict):
        data["search"] = {**(data.get("search") or {}), **search_overrides}
    return with_absolute_paths(parse_task(data, str(path)))


def with_absolute_paths(task: Task) -> Task:
    """The task's local paths (model, tokenizer, engine binary) made absolute from the folder the
    command runs in, `~` expanded: each trial runs in its own folder (Ray's trial directory), and
    the engine and genai-bench start there. A name that is no local path stays as written: a hub
    id (`org/model`) or a binary looked up on PATH."""
    def local(value: str | None, *, binary: bool = False) -> str | None:
        if not value or value.startswith("builtin:"):
            return value
        expanded = Path(value).expanduser()
        if expanded.is_absolute():
            return str(expanded)  # `~/x` expanded, `/x` as written
        # A binary is a path when it has a slash (as a shell reads it: a bare name is looked up on
        # PATH, even with a file of that name here); a model or tokenizer when it is here.
        is_path = "/" in value if binary else value.startswith(("./", "../")) or expanded.exists()
        return str(expanded.absolute()) if is_path else value

    model = task.model.model_copy(update={"path": local(task.model.path), "tokenizer": local(task.model.tokenizer)})
    engine = task.engine.model_copy(update={"binary": local(task.engine.binary, binary=True)})
    return task.model_copy(update={"model": model, "engine": engine})


def read_task_file(path: str | Path) -> Any:
    """A task file's data as written, not yet validated; TaskError if it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise TaskError(f"{path}: cannot read the task file ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise TaskError(f"{path}: cannot read the task file (not UTF-8 text: byte {error.start})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _RepeatedKey as error:
        raise TaskError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        raise TaskError(f"{path}: not valid YAML or JSON{where}: {problem}") from None
    except RecursionError:
        raise TaskError(f"{path}: not a task file (nested too deeply to read)") from None
    except TypeError:  # a complex key (`? [a, b]`): a list or mapping where a name should be
        raise TaskError(f"{path}: a key that is a list or mapping; every key of a task file is a name") from None
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of a repeated key silently (a second `search:` block would replace the
    first): refuse it instead, naming the key and both lines."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in with `<<` may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _RepeatedKey(f"key {key!r} appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                                   "YAML would keep only the last")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


class _RepeatedKey(yaml.YAMLError):
    pass


def _one_line(error: ValidationError) -> str:
    """The first validation problem as `field.path: what is wrong`."""
    first = error.errors()[0]
    # Unions add their member names to the location ("range", "int", "tagged-union[...]"); keep
    # only the user's own path.
    loc = [str(part) for part in first["loc"]
           if not (isinstance(part, str) and ("[" in part or part in _UNION_TAGS))]
    field = ".".join(loc)
    message = first["msg"].removeprefix("Value error, ")
    if not field:  # a whole-task check: its message names the field itself
        return message
    if first["type"] == "extra_forbidden":
        return f"{field}: unknown key{_did_you_mean(first['loc'])}"
    if first["type"] == "missing":
        return f"{field}: required key is missing"
    if first["type"] == "union_tag_not_found":  # a range without `type`
        return f"{field}: a range needs 'type: int' or 'type: float'"
    if first["type"] == "too_short" and isinstance(first.get("input"), (list, dict)):
        return f"{field}: must not be empty"
    if first["type"] in ("model_type", "dict_type"):  # (pydantic names its class: "instance of Engine")
        got = first.get("input")
        return f"{field}: must be a mapping of keys to values, not {'null' if got is None else repr(got)}"
    got = first.get("input")
    if (isinstance(got, (dict, list)) or got is None) and first["type"] in _SCALAR_TYPES:
        # A union of scalars reports its first member ("a valid boolean"), which is not the problem.
        what = "null" if got is None else f"a {type(got).__name__}"
        return f"{field}: must be a single value (a number, a string or true/false), not {what}"
    if first["type"] in ("literal_error", "value_error") or isinstance(got, (dict, list)) or got is None:
        return f"{field}: {message}"
    return f"{field}: {message} (got {got!r})"


_SCALAR_TYPES = {"bool_type", "int_type", "float_type", "string_type"}
_UNION_TAGS = {"choices", "range", "local", "ome", "constrained-float", "Slo", "limit", "slo", "int", "float", "bool", "str", "IntRange", "FloatRange"}


def _did_you_mean(loc: tuple) -> str:
    model: Any = Task
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        model = field.annotation
    fields = getattr(model, "model_fields", {})
    close = difflib.get_close_matches(str(loc[-1]), list(fields), n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(fields)}"
