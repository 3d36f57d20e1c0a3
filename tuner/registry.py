"""Search algorithms and schedulers by name or by `package.module:Class`, imported only when used.

An unknown name fails listing the valid ones; a missing optional package fails naming what to
install (Ray Tune's own `create_searcher` does the same).
"""

from __future__ import annotations

import importlib
import pickle
import random
from typing import Any

from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from llm_autotuner.errors import TaskError
from llm_autotuner.task import SCHEDULER_NAMES, SEARCHER_NAMES

# name -> (import path, the PyPI package that provides it); the names are validated in tuner.task
SEARCHERS = {
    "hyperopt": ("ray.tune.search.hyperopt:HyperOptSearch", "hyperopt"),
    "optuna": ("ray.tune.search.optuna:OptunaSearch", "optuna"),
    "random": ("llm_autotuner.tuner.registry:RandomSearcher", None),
    "grid": ("llm_autotuner.tuner.registry:GridSearcher", None),
}
# "hyperband" is asynchronous HyperBand (ASHA over several brackets): the synchronous
# HyperBandScheduler pauses trials, and a paused engine benchmark cannot resume where it stopped.
SCHEDULERS = {
    "asha": ("ray.tune.schedulers:ASHAScheduler", None),
    "hyperband": ("ray.tune.schedulers:AsyncHyperBandScheduler", None),
    "median": ("ray.tune.schedulers:MedianStoppingRule", None),
    "none": ("ray.tune.schedulers:FIFOScheduler", None),
}
assert tuple(SEARCHERS) == SEARCHER_NAMES and tuple(SCHEDULERS) == SCHEDULER_NAMES


def is_import_path(name: str) -> bool:
    return ":" in name


def load(path: str, field: str, package: str | None = None) -> type:
    """`package.module:Class` -> the class, or a TaskError naming `field` and what to do."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        if package:  # a searcher or scheduler Ray Tune wraps: its library
            raise TaskError(f"{field}: cannot import {module_name} ({error}); install it: pip install {package}") from None
        # The user's own class: a module of theirs, or a library it needs.
        raise TaskError(f"{field}: cannot import {module_name} ({error}); install what it needs, and put the "
                        "folder holding your module on PYTHONPATH") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise TaskError(f"{field}: {module_name} has no {attribute!r}") from None


def searcher_class(name: str) -> type:
    return _plugin(name, SEARCHERS, Searcher, "ray.tune.search.Searcher", "search.algorithm")


def scheduler_class(name: str) -> type:
    return _plugin(name, SCHEDULERS, TrialScheduler, "ray.tune.schedulers.TrialScheduler", "search.scheduler")


def can_resume(searcher: type) -> bool:
    """Ray keeps a searcher's state across --resume only through its save/restore."""
    return searcher.save is not Searcher.save and searcher.restore is not Searcher.restore


def _plugin(name: str, table: dict, base: type, base_name: str, field: str) -> type:
    if is_import_path(name):
        cls = load(name, field)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TaskError(f"{field}: {name} is not a {base_name}")
        return cls
    if name not in table:
        raise TaskError(f"{field}: unknown {name!r}; choose one of {', '.join(table)} or give package.module:Class")
    path, package = table[name]
    return load(path, field, package)


class _Sequence(Searcher):
    """Shared by the plain searchers: configs handed out one by one, state kept for resume."""

    def __init__(self, metric: str | None = None, mode: str | None = None):
        super().__init__(metric=metric, mode=mode)
        self._pending: list[dict] = []

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # these searchers do not learn

    def get_state(self) -> dict:
        return {"pending": self._pending}

    def set_state(self, state: dict) -> None:
        self._pending = state["pending"]

    # Ray saves the innermost searcher through save/restore (the wrappers through get/set_state).
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.get_state(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.set_state(pickle.load(file))


class RandomSearcher(_Sequence):
    """Plain random sampling (seedable) as a Searcher, so it composes with the wrappers."""

    def __init__(self, seed: int | None = None, points_to_evaluate: list[dict] | None = None, **_: Any):
        super().__init__()
        self._random = random.Random(seed)
        self._pending = [dict(point) for point in points_to_evaluate or []]
        self._space: dict = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._metric, self._mode, self._space = metric, mode, config
        return True

    def suggest(self, trial_id: str) -> dict:
        if self._pending:
            return self._pending.pop(0)
        return {name: domain.sample(random_state=self._random.randint(0, 2**31 - 1))
                for name, domain in self._space.items()}

    def get_state(self) -> dict:
        return super().get_state() | {"random": self._random.getstate()}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._random.setstate(state["random"])


class GridSearcher(_Sequence):
    """The exhaustive Cartesian product of a discrete space, then FINISHED."""

    def __init__(self, points: list[dict], **_: Any):
        super().__init__()
        self._pending = [dict(point) for point in points]

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._metric, self._mode = metric, mode
        return True

    def suggest(self, trial_id: str) -> dict | str:
        return self._pending.pop(0) if self._pending else Searcher.FINISHED
