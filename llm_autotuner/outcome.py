"""How a trial ended, and how a trial config marks the baseline: words every layer uses."""

from __future__ import annotations

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
