"""A custom Ray Tune Searcher used by examples/custom-searcher/task.yaml.

Any `ray.tune.search.Searcher` works: give `search.algorithm: module:Class` with the module on the
Python path, and `search.algorithm_args` as its keyword arguments. This one is coordinate descent
over choice parameters: it tries every value of one parameter with the others at the best values
so far, waits for those trials, keeps the best, and moves on to the next parameter.
"""

from __future__ import annotations

import pickle

from ray.tune.search import Searcher


class CoordinateDescent(Searcher):
    def __init__(self, order: list[str] | None = None):
        super().__init__()
        self.order = order
        self.space: dict[str, list] = {}
        self.best: dict = {}
        self.best_score = float("-inf")
        self.position = 0
        self.pending: list[dict] = []
        self.live: dict[str, dict] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._metric, self._mode = metric, mode
        self.space = {name: list(domain.categories) for name, domain in config.items()}
        self.order = self.order or list(self.space)
        self.best = {name: values[0] for name, values in self.space.items()}
        self.pending = self._candidates(include_best=True)
        return True

    def _candidates(self, include_best: bool = False) -> list[dict]:
        name = self.order[self.position]
        return [dict(self.best, **{name: value}) for value in self.space[name]
                if include_best or value != self.best[name]]  # the best itself is measured already

    def suggest(self, trial_id: str):
        while not self.pending:
            if self.live:
                return None  # wait until this parameter's trials are done
            self.position += 1
            if self.position >= len(self.order):
                return Searcher.FINISHED
            self.pending = self._candidates()
        config = self.pending.pop(0)
        self.live[trial_id] = config
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        config = self.live.pop(trial_id, None)
        score = (result or {}).get(self._metric)
        if config is not None and not error and score is not None and score > self.best_score:
            self.best_score, self.best = score, config

    # What `autotuner run --resume` needs: Ray saves the searcher's state with these and restores it.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
