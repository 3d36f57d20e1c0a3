"""One line per event while tuning: a trial starts, finishes a stage, is stopped, fails."""

from __future__ import annotations

import re
import sys
import time

from ray.tune import Callback

from llm_autotuner.outcome import BASELINE_KEY, trial_params
from llm_autotuner.errors import lost_worker, trial_error


class ProgressPrinter(Callback):
    """Prints one line per trial event."""

    def __init__(self, metric: str, num_stages: int, label: str = "trial"):
        self.label = label  # "confirm" for the re-measurements after the search
        self.metric = metric
        self.num_stages = num_stages
        self.started = time.monotonic()
        self.last_stage: dict[str, int] = {}

    def _say(self, trial, text: str) -> None:
        elapsed = time.monotonic() - self.started
        # sys.stdout is looked up each time: Ray pickles this callback with the experiment.
        print(f"[{elapsed:6.0f}s] {self.label} {_number(trial)}: {text}", file=sys.stdout, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        config = trial.config
        what = "engine defaults (baseline)" if config.get(BASELINE_KEY) else \
            " ".join(f"{k}={v}" for k, v in trial_params(config).items())
        self._say(trial, f"start  {what}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last_stage[trial.trial_id] = result.get("stage", 0)
        if result.get("error"):
            return  # said by on_trial_complete
        if not result.get("stage"):
            return  # ended before its first stage (stopped, or fits no node): said by on_trial_complete
        stage_metrics = result.get("metrics") or {}
        line = (f"stage {result['stage']}/{self.num_stages} (concurrency {stage_metrics.get('concurrency')}): "
                f"{self.metric} {stage_metrics.get(self.metric, float('nan')):.4g}")
        if result.get("violation"):
            line += f"  infeasible: {result['violation']}"
        self._say(trial, line)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        stage = self.last_stage.get(trial.trial_id, 0)
        if result.get("error"):
            self._say(trial, f"FAILED {result['error'].splitlines()[0][:200]}")
        elif result.get("violation"):
            self._say(trial, "infeasible, stopped" if stage else f"infeasible: {result['violation']}")
        elif stage < self.num_stages:
            self._say(trial, f"stopped early by the scheduler after stage {stage}")
        else:
            self._say(trial, f"done   {self.metric} {result.get('objective', float('nan')):.4g} (mean of stages)")

    def on_trial_recover(self, iteration, trials, trial, **info):
        lost = lost_worker(trial_error(trial)) or "Ray reported an error (see its error.txt)"
        self._say(trial, f"{lost}: an infrastructure failure, not the config's; running the trial again")

    def on_trial_error(self, iteration, trials, trial, **info):
        lost = lost_worker(trial_error(trial))
        self._say(trial, f"FAILED {lost} again" if lost else "FAILED (see results.json for the error)")


def _number(trial) -> str:
    match = re.search(r"^(\d+)_", getattr(trial, "experiment_tag", "") or "")
    return match.group(1) if match else trial.trial_id
