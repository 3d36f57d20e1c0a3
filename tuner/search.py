"""Search algorithm and scheduler for a task, and the baseline trial that neither may touch.

The baseline (the engine's own defaults) is the first trial. It is added by wrapping the
searcher, so the searcher never sees it, and it is exempt from early stopping, so it is measured
over every stage and the result can show the gain over defaults.
"""

from __future__ import annotations

import random
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.hyperopt import HyperOptSearch

from trainables.trial import BASELINE_KEY
from tuner.task import Task

METRIC, MODE, TIME_ATTR = "score", "max", "stage"


class BaselineFirst(Searcher):
    """Suggest `baseline` once, then delegate; results of the baseline are not passed on."""

    def __init__(self, searcher: Searcher, baseline: dict[str, Any]):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.baseline = baseline
        self.baseline_trial_id: str | None = None

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        self._metric, self._mode = metric, mode
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        if self.baseline_trial_id is None:
            self.baseline_trial_id = trial_id
            return dict(self.baseline)
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id != self.baseline_trial_id:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id != self.baseline_trial_id:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)

    # Ray saves each wrapper's state and the innermost searcher separately (SearchGenerator).
    def get_state(self) -> dict:
        return {"baseline": self.baseline, "baseline_trial_id": self.baseline_trial_id}

    def set_state(self, state: dict) -> None:
        self.baseline, self.baseline_trial_id = state["baseline"], state["baseline_trial_id"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class SparingBaselineASHA(ASHAScheduler):
    """ASHA over benchmark stages that never stops the baseline trial."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.config.get(BASELINE_KEY):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def build_searcher(task: Task, max_concurrent: int) -> Searcher:
    search = task.search
    if search.algorithm == "hyperopt":
        # HyperOpt samples at random for its first n points; 20 (its default) would be the whole
        # budget of a small run, so start modelling after a third of it.
        inner: Searcher = HyperOptSearch(n_initial_points=max(2, min(20, search.num_samples // 3)),
                                         random_state_seed=search.seed,
                                         points_to_evaluate=[dict(p) for p in search.initial_points] or None)
    else:
        inner = _RandomSearcher(search.seed, search.initial_points)
    searcher: Searcher = ConcurrencyLimiter(inner, max_concurrent=max_concurrent)
    if search.baseline:
        searcher = BaselineFirst(searcher, {name: None for name in task.search_space} | {BASELINE_KEY: True})
    return searcher


def build_scheduler(task: Task) -> TrialScheduler:
    search = task.search
    if search.scheduler == "none":
        return FIFOScheduler()
    return SparingBaselineASHA(time_attr=TIME_ATTR, max_t=len(task.benchmark.concurrency),
                               grace_period=search.grace_period, reduction_factor=search.reduction_factor)


class _RandomSearcher(Searcher):
    """Plain random sampling as a Searcher, so it composes with the wrappers above."""

    def __init__(self, seed: int | None, initial_points: list[dict]):
        super().__init__()
        self._random = random.Random(seed)
        self._pending = [dict(point) for point in initial_points]
        self._space: dict = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._metric, self._mode, self._space = metric, mode, config
        return True

    def suggest(self, trial_id: str) -> dict:
        if self._pending:
            return self._pending.pop(0)
        return {name: domain.sample(random_state=self._random.randint(0, 2**31 - 1))
                for name, domain in self._space.items()}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def get_state(self) -> dict:
        return {"random": self._random.getstate(), "pending": self._pending}

    def set_state(self, state: dict) -> None:
        self._random.setstate(state["random"])
        self._pending = state["pending"]

