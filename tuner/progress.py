"""One line per event while tuning: a trial starts, finishes a stage, is stopped, fails."""

from __future__ import annotations

import re
import sys
import time

from ray.tune import Callback

from llm_autotuner.metrics import figure
from llm_autotuner.objective import gain
from llm_autotuner.outcome import BASELINE_KEY, Outcome, stage_metrics, trial_params
from llm_autotuner.errors import lost_worker, trial_error


class ProgressPrinter(Callback):
    """Prints one line per trial event."""

    def __init__(self, metric: str, num_stages: int, label: str = "trial", requests_per_stage: int = 0,
                 names: dict[str, str] | None = None):
        self.label = label  # "confirm" for the re-measurements after the search
        # config_text(config) -> the name it is known by ("experiment 9"): which finalist a
        # re-measurement is, so its lines can be matched with the search's table.
        self.names = names or {}
        self.metric = metric
        self.num_stages = num_stages
        self.requests_per_stage = requests_per_stage  # what a stage asks for (0: not said)
        self.started = time.monotonic()
        self.last_stage: dict[str, int] = {}

    def close(self) -> None:
        """Nothing to stop: each line is written as it comes."""

    def _say(self, trial, text: str) -> None:
        elapsed = time.monotonic() - self.started
        # sys.stdout is looked up each time: Ray pickles this callback with the experiment.
        print(f"[{elapsed:6.0f}s] {self.label} {trial_number(trial)}: {text}", file=sys.stdout, flush=True)

    def describe(self, config: dict) -> str:
        what = config_text(config)
        name = self.names.get(what)
        return f"{name}: {what}" if name else what

    def on_trial_start(self, iteration, trials, trial, **info):
        baseline = " (baseline)" if trial.config.get(BASELINE_KEY) else ""
        self._say(trial, f"start  {self.describe(trial.config)}{baseline}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last_stage[trial.trial_id] = result.get("stage", 0)
        if result.get("error"):
            return  # said by on_trial_complete
        measured = stage_metrics(result)
        if not result.get("stage") or not measured:
            # Ended before its first stage (stopped, or fits no node), or the run's stop cut it
            # mid-stage (its report repeats the last stage, measuring nothing): said by on_trial_complete.
            return
        line = (f"stage {result['stage']}/{self.num_stages} (concurrency {measured.get('concurrency')}): "
                f"{self.metric} {figure(measured.get(self.metric, float('nan')))}")
        made = measured.get("num_requests")
        if isinstance(made, int) and made < self.requests_per_stage:
            # Its time (max_minutes_per_stage) ran out first: a slow config, or a stalled machine.
            line += f"  (only {made} of {self.requests_per_stage} requests within the stage's time)"
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
        elif result.get("outcome") == Outcome.INTERRUPTED.value:
            self._say(trial, f"stopped by the run's end after stage {stage}")  # a signal, the budget, patience, the guard
        elif stage < self.num_stages:
            self._say(trial, f"stopped early by the scheduler after stage {stage}")
        else:
            self._say(trial, f"done   {self.metric} {figure(result.get('objective', float('nan')))} (mean of stages)")

    def on_trial_recover(self, iteration, trials, trial, **info):
        lost = lost_worker(trial_error(trial)) or "Ray reported an error (see its error.txt)"
        self._say(trial, f"{lost}: an infrastructure failure, not the config's; running the trial again")

    def on_trial_error(self, iteration, trials, trial, **info):
        lost = lost_worker(trial_error(trial))
        self._say(trial, f"FAILED {lost} again" if lost else "FAILED (see results.json for the error)")


def trial_number(trial) -> str:
    match = re.search(r"^(\d+)_", getattr(trial, "experiment_tag", "") or "")
    return match.group(1) if match else trial.trial_id


class LiveProgress(ProgressPrinter):
    """On a terminal: the event lines scroll as before, above a panel redrawn in place (rich's Live)
    with one line per running trial (number, parameters, stage k of n, the objective at its last
    stage, status) and an overall line (trials done of the budget, the best so far and its gain over
    the baseline, elapsed, an estimate of the time left). The callbacks only record what happened;
    rich draws in its own thread, twice a second, so Ray's result processing stays cheap."""

    def __init__(self, metric: str, num_stages: int, budget: int, maximize: bool, label: str = "trial",
                 requests_per_stage: int = 0, names: dict[str, str] | None = None):
        super().__init__(metric, num_stages, label, requests_per_stage, names)
        self.budget, self.maximize = budget, maximize
        self.running: dict[str, dict] = {}  # trial id -> what its line shows
        self.done = 0
        self.done_before: int | None = None  # trials an earlier session of a resumed run finished (first step)
        self.best: tuple[str, float] | None = None  # (trial number, objective)
        self.baseline: float | None = None
        self._live = None

    def __getstate__(self) -> dict:  # Ray pickles its callbacks with the experiment: not the display
        return {**self.__dict__, "_live": None}

    def setup(self, **info) -> None:
        from rich.console import Console
        from rich.live import Live

        self._live = Live(self, console=Console(file=sys.stdout, force_terminal=True), refresh_per_second=2,
                          transient=True, redirect_stdout=False, redirect_stderr=False)
        self._live.start()

    def close(self) -> None:
        """Stop redrawing (the panel goes; the lines above it stay). Safe to call twice."""
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    def on_experiment_end(self, trials, **info) -> None:
        self.close()

    def _say(self, trial, text: str) -> None:
        if self._live is None:
            return super()._say(trial, text)
        elapsed = time.monotonic() - self.started
        self._live.console.print(f"[{elapsed:6.0f}s] {self.label} {trial_number(trial)}: {text}", markup=False,
                                 highlight=False, soft_wrap=True)

    def on_step_begin(self, iteration, trials, **info):
        if self.done_before is None:
            # On --resume Ray brings back the trials the earlier session finished: they count as
            # done (and for the best so far), but not for the pace of this session's estimate.
            for trial in trials:
                if trial.status in ("TERMINATED", "ERROR"):
                    self._ended(trial)
            self.done_before = self.done

    def on_trial_start(self, iteration, trials, trial, **info):
        super().on_trial_start(iteration, trials, trial, **info)
        self.running[trial.trial_id] = {
            "number": trial_number(trial), "stage": 0, "value": None, "status": "starting",
            "params": self.describe(trial.config)}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        super().on_trial_result(iteration, trials, trial, result, **info)
        row = self.running.get(trial.trial_id)
        if row is not None and result.get("stage"):
            row.update(stage=result["stage"], value=(stage_metrics(result) or {}).get(self.metric),
                       status="infeasible" if result.get("violation") else "benchmarking")

    def on_trial_complete(self, iteration, trials, trial, **info):
        super().on_trial_complete(iteration, trials, trial, **info)
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        super().on_trial_error(iteration, trials, trial, **info)
        self._ended(trial)

    def _ended(self, trial) -> None:
        row = self.running.pop(trial.trial_id, None)
        self.done += 1
        result = trial.last_result or {}
        value = result.get("objective")
        if result.get("error") or result.get("violation") or value is None or result.get("stage") != self.num_stages:
            return
        if trial.config.get(BASELINE_KEY):
            self.baseline = value
        if self.best is None or (value > self.best[1] if self.maximize else value < self.best[1]):
            self.best = (row["number"] if row else trial_number(trial), value)

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table

        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in (self.label, "parameters", "stage", self.metric, "status"):
            table.add_column(column)
        for row in list(self.running.values()):
            table.add_row(str(row["number"]), row["params"], f"{row['stage']}/{self.num_stages}",
                          "-" if row["value"] is None else figure(row["value"]), row["status"])
        elapsed = time.monotonic() - self.started
        overall = f"{self.done}/{self.budget} {self.label}s done"
        if self.best is not None:
            overall += f" | best {self.metric} {figure(self.best[1])} ({self.label} {self.best[0]})"
            if self.baseline:
                overall += f", {gain(self.best[1], self.baseline, self.metric):+.1%} vs engine defaults"
        overall += f" | elapsed {_clock(elapsed)}"
        done_here = self.done - (self.done_before or 0)
        if 0 < done_here and self.done < self.budget:
            overall += f" | about {_clock(elapsed / done_here * (self.budget - self.done))} left"
        return Group(table, overall)


def config_text(config: dict) -> str:
    """A trial's config as its lines show it."""
    if config.get(BASELINE_KEY):
        return "engine defaults"
    return " ".join(f"{k}={v}" for k, v in trial_params(config).items())


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"
