"""How a trial ended, and how a trial config marks the baseline: words every layer uses."""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import Any

# Config key marking the baseline trial (engine defaults). No flag name can start with '_'.
BASELINE_KEY = "__baseline__"


class Outcome(str, Enum):
    """A trial's end, as results.json and trials.csv spell it.

    The trial states the ends it decides (its report carries `outcome`); the driver adds the ones
    Ray decides: the scheduler stopped it between stages, the run's end (time budget, patience, a
    stop of the whole run) cut it, Ray lost its worker, a signal interrupted it.
    """

    COMPLETED = "completed"  # every stage measured, SLOs met
    STOPPED_BY_SCHEDULER = "stopped-by-scheduler"  # ASHA (or another scheduler) cut it between stages
    STOPPED_BY_BUDGET = "stopped-by-budget"  # the run ended (time budget, patience, failure guard) first
    INFEASIBLE = "infeasible"  # an SLO was broken: stopped at that stage
    FAILED = "failed"  # this config failed: the engine rejected its flags or crashed, the benchmark failed
    FAILED_INFRASTRUCTURE = "failed-infrastructure"  # the platform failed it: a lost worker or node, a 403
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM came first


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """The engine parameters of a trial config (None = leave the engine's default)."""
    return {key: value for key, value in config.items() if key != BASELINE_KEY}


def packed_metrics(metrics: dict[str, Any]) -> str:
    """A stage's measurements as a trial reports them to Ray Tune: one JSON string, not a dict.

    Ray Tune's driver keeps, for every number of every trial's reports, running statistics (max,
    min, mean, last-5 and last-10 means, two deques) until the run ends, and writes them all to its
    experiment state each time it saves it; a stage's 40-odd numbers made the driver grow ~0.37 MB
    per trial, 4x what Ray Tune costs on its own (docs/benchmarks.md, driver scale). Nothing reads
    those statistics: the searcher and schedulers use `score`, and the tuner reads the stage's
    numbers from the reports (stage_metrics)."""
    return json.dumps(metrics)


def stage_metrics(report: dict[str, Any]) -> dict[str, Any] | None:
    """The stage's measurements of a trial's report (None when it measured nothing). A dict is
    what versions before packed_metrics reported: their runs can still be resumed and read."""
    metrics = report.get("metrics")
    return json.loads(metrics) if isinstance(metrics, str) else metrics


def creation_number(trial_dir_name: str, trial_id: str) -> int:
    """The trial's number in its phase, as Ray puts it after the id in the trial's folder name
    (`TrialTrainable_<id>_<N>_<params>`): results call it experiment_id. 0 if absent."""
    match = re.search(rf"_{re.escape(trial_id)}_(\d+)_", trial_dir_name)
    return int(match.group(1)) if match else 0


def trial_label(task_name: str, phase: str, number: int, config: dict[str, Any]) -> str:
    """How a trial is named where people look for it (Ray's dashboard): the task, the phase
    (tune, confirm), its number and its config."""
    params = trial_params(config)
    what = "engine defaults" if config.get(BASELINE_KEY) else " ".join(f"{k}={v}" for k, v in params.items())
    return f"{task_name} {phase} #{number}: {what or 'engine defaults'}"
