"""Search algorithm, scheduler and stopper for a task, and the baseline trial that neither may touch.

The baseline (the engine's own defaults) is the first trial. It is added by wrapping the
searcher, so the searcher never sees it, and it is exempt from early stopping, so it is measured
over every stage and the result can show the gain over defaults.

A trial the scheduler stopped early is told to the searcher (and counted by patience) as worse
than every trial that went further (StageLadder), not by the mean of its low-load stages.
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any, Callable

import ray
from ray.tune import Callback, Stopper
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from llm_autotuner.cluster.backend import shortfall
from llm_autotuner.cluster.engines import profile_for
from llm_autotuner.objective import INFEASIBLE_SCORE
from llm_autotuner.outcome import BASELINE_KEY, Outcome
from llm_autotuner.tuner import registry
from llm_autotuner.tuner.progress import trial_number
from llm_autotuner.tuner.session import SessionBound
from llm_autotuner.errors import TaskError, lost_worker, trial_error
from llm_autotuner.metrics import maximize
from llm_autotuner.task import Task, grid_points, space_size

METRIC, MODE, TIME_ATTR = "score", "max", "stage"
OBJECTIVES = "objectives"  # each objective's own value in a trial's report, under objectives/<metric>
# Where a trial that ended early lands when no trial has yet gone further than it: below any value
# a benchmark measures, above a failure (INFEASIBLE_SCORE), since it ran and was only slower.
NOTHING_FURTHER = INFEASIBLE_SCORE / 2


class StageLadder:
    """Places a trial that ended before its last stage (the scheduler or the run's end stopped it)
    below every trial known to have gone further.

    Such a trial's own score is the mean of its first stages only, measured at lower load than the
    last ones: for a latency it beats every full-length mean, so a searcher told it would be steered
    toward the very configs the scheduler cut, and patience would count them as new bests. Instead
    it gets the lowest value given to any finished trial that completed more stages, less how far
    it trailed the best trial at its own last stage. Stopped trials then rank by how far they got,
    then by how they did there; completed trials keep what they measured; failures and broken SLOs
    keep the worst score. `keys`: the result keys to place, each with whether higher is better.
    """

    def __init__(self, keys: dict[str, bool]):
        self.keys = keys
        self.at_stage: dict[int, dict[str, dict[str, float]]] = {}  # stage -> trial -> key -> value, higher better
        self.finished: dict[str, tuple[int, dict[str, float]]] = {}  # trial -> stages, values given (higher better)

    def observe(self, trial_id: str, result: dict) -> None:
        if _measured(result):
            self.at_stage.setdefault(result[TIME_ATTR], {})[trial_id] = self._oriented(result)

    def ended(self, trial_id: str, result: dict) -> dict[str, float]:
        """The values to tell for a trial that ended with `result` (empty: tell what it reported)."""
        if not _measured(result):
            return {}
        self.observe(trial_id, result)
        stage, values = result[TIME_ATTR], self._oriented(result)
        if result.get("outcome") != Outcome.COMPLETED:
            values = {key: self._below(stage, key, value) for key, value in values.items()}
        self.finished[trial_id] = (stage, values)
        return {key: value if self.keys[key] else -value for key, value in values.items()}

    def _oriented(self, result: dict) -> dict[str, float]:
        return {key: result[key] if higher else -result[key] for key, higher in self.keys.items() if key in result}

    def _below(self, stage: int, key: str, own: float) -> float:
        further = [values[key] for stages, values in self.finished.values() if stages > stage]
        floor = min(further, default=NOTHING_FURTHER)
        best = max(values[key] for values in self.at_stage[stage].values())
        # Strictly below, even for a trial that led its stage (the run's end, not the scheduler, cut it).
        return min(floor - (best - own), math.nextafter(floor, -math.inf))

    def get_state(self) -> dict:
        return {"at_stage": self.at_stage, "finished": self.finished}

    def set_state(self, state: dict) -> None:
        self.at_stage, self.finished = state["at_stage"], state["finished"]


def _measured(result: dict) -> bool:
    """A stage's measurement, not a failure or a broken SLO (those report the worst score)."""
    return not result.get("error") and result.get(TIME_ATTR, 0) >= 1 and result.get(METRIC, INFEASIBLE_SCORE) > INFEASIBLE_SCORE


class ComparableScores(Searcher):
    """Tells the searcher a trial's score (and each objective) comparable across trials of different
    lengths (StageLadder). Only what the searcher is told changes: the result Ray hands on is copied,
    so the trial's own reports, the results and the other callbacks see what it measured."""

    def __init__(self, searcher: Searcher, keys: dict[str, bool]):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.ladder = StageLadder(keys)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        self._metric, self._mode = metric, mode
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.ladder.observe(trial_id, result)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result is not None and not error:
            result = result | self.ladder.ended(trial_id, result)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    # Ray saves each wrapper's state and the innermost searcher separately (SearchGenerator).
    def get_state(self) -> dict:
        return self.ladder.get_state()

    def set_state(self, state: dict) -> None:
        self.ladder.set_state(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class DistinctConfigs(Searcher):
    """Asks the searcher again when it suggests a config already tried.

    On a space of a few dozen configs a model-based searcher keeps suggesting its favourites
    (HyperOpt, 16 samples of a 48-config space: a third of them repeats), and each repeat would
    spend a whole trial to learn what is known; a config's noise is the re-measurement's job. A
    repeat is told the first run's outcome instead (once that has ended), so the searcher learns
    as if it had run it. A searcher that suggests only tried configs `tries` times in a row gets
    an untried config of a finite space picked at random (it is not told that trial: HyperOpt
    cannot be told a point it did not suggest), else its repeat. When every config of a finite
    space has been tried the search is finished. A config whose run measured nothing through no
    fault of its own (Ray lost the worker; the cluster refused the deployment) may run again.
    """

    def __init__(self, searcher: Searcher, space: dict[str, Any], seed: int | None, listed: int = 0,
                 tries: int = 20, effective: Callable[[dict], dict] = lambda config: config):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.space, self.tries = searcher, space, tries
        # Configs are told apart as the engine runs them (EngineProfile.effective): two that it runs
        # alike are one config, handed out as it runs.
        self.effective = effective
        self.size = distinct_count(space, effective)
        # The task's initial_points, which every searcher suggests first: run as the user listed
        # them, a point listed twice twice.
        self.listed = listed
        self.random = random.Random(seed)
        self.tried: set[str] = set()  # configs handed out (canonical JSON)
        self.inner_id: dict[str, str | None] = {}  # Ray's trial -> the searcher's (None: one it did not suggest)
        self.config_of: dict[str, str] = {}  # Ray's trial and the searcher's repeats -> config
        self.outcome: dict[str, tuple[dict | None, bool]] = {}  # config -> (result, error) of its first run
        self.waiting: dict[str, list[str]] = {}  # config -> the searcher's repeats to tell when it ends

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        self._metric, self._mode = metric, mode
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        if self.listed:
            self.listed -= 1
            config = self.searcher.suggest(trial_id)
            if not isinstance(config, dict):
                return config
            config = self.effective(config)
            return self._hand_out(trial_id, trial_id, spelling(config), config)
        for attempt in range(self.tries):
            if self.size is not None and len(self.tried) >= self.size:
                return Searcher.FINISHED
            inner_id = trial_id if attempt == 0 else f"{trial_id}-repeat{attempt}"
            config = self.searcher.suggest(inner_id)
            if not isinstance(config, dict):
                return config  # None (wait) or FINISHED
            config = self.effective(config)
            key = spelling(config)
            if key not in self.tried:
                return self._hand_out(trial_id, inner_id, key, config)
            self.config_of[inner_id] = key
            if key in self.outcome:
                result, error = self.outcome[key]
                self.searcher.on_trial_complete(inner_id, result=result, error=error)
            else:
                self.waiting.setdefault(key, []).append(inner_id)
        untried = untried_config(self.space, self.effective, self.size, self.tried, self.random)
        return self._hand_out(trial_id, None, spelling(untried), untried) if untried else config

    def _hand_out(self, trial_id: str, inner_id: str | None, key: str, config: dict) -> dict:
        self.tried.add(key)
        self.inner_id[trial_id], self.config_of[trial_id] = inner_id, key
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.inner_id.get(trial_id, trial_id) is not None:
            self.searcher.on_trial_result(self.inner_id.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        inner_id = self.inner_id.pop(trial_id, trial_id)
        if inner_id is not None:
            self.searcher.on_trial_complete(inner_id, result=result, error=error)
        key = self.config_of.get(trial_id)
        if key is None or key in self.outcome:
            return
        for repeat in self.waiting.pop(key, []):
            self.searcher.on_trial_complete(repeat, result=result, error=error)
        if error or (result or {}).get("outcome") == Outcome.FAILED_INFRASTRUCTURE:
            self.tried.discard(key)  # not measured, and not the config's doing (a lost worker): it may run again
        else:
            # Its numbers only (what a searcher learns from): the state is saved every second,
            # and the stage's packed measurements would make it grow by kilobytes a trial.
            self.outcome[key] = ({k: v for k, v in result.items() if isinstance(v, (int, float))} if result else result,
                                 error)

    # Ray saves each wrapper's state and the innermost searcher separately (SearchGenerator).
    def get_state(self) -> dict:
        names = ("tried", "inner_id", "config_of", "outcome", "waiting", "listed")
        return {name: getattr(self, name) for name in names} | {"random": self.random.getstate()}

    def set_state(self, state: dict) -> None:
        for name in ("tried", "inner_id", "config_of", "outcome", "waiting", "listed"):
            setattr(self, name, state[name])
        self.random.setstate(state["random"])

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def untried_config(space: dict[str, Any], effective: Callable[[dict], dict], size: int | None, tried: set[str],
                   rng: random.Random) -> dict | None:
    """A config of a finite space (`size` distinct ones) whose spelling is not in `tried`, picked
    at random as the engine runs it; None when all are tried or the space is too large to list."""
    if size is None or size > 100_000:  # unbounded, or too many to list
        return None
    configs = {key: config for config in map(effective, grid_points(space)) if (key := spelling(config)) not in tried}
    return rng.choice(list(configs.values())) if configs else None


def spelling(config: dict) -> str:
    """One spelling of a config: numpy's numbers (HyperOpt's) as Python's."""
    return json.dumps({name: value.item() if hasattr(value, "item") else value for name, value in config.items()},
                      sort_keys=True, default=str)


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


def spare_baseline(scheduler_class: type) -> type:
    """The scheduler, except that it never stops (or pauses) the baseline trial."""

    class BaselineSparing(scheduler_class):
        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            if trial.config.get(BASELINE_KEY):
                return TrialScheduler.CONTINUE
            return super().on_trial_result(tune_controller, trial, result)

    BaselineSparing.__name__ = BaselineSparing.__qualname__ = f"BaselineSparing{scheduler_class.__name__}"
    return BaselineSparing


def keep_objectives(searcher_class: type) -> type:
    """The searcher, except that it keeps the objectives it was built with: Ray Tune would hand
    it the scheduler's single metric ("score")."""

    class KeepsObjectives(searcher_class):
        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return super().set_search_properties(None, None, config, **spec)

    KeepsObjectives.__name__ = KeepsObjectives.__qualname__ = f"MultiObjective{searcher_class.__name__}"
    return KeepsObjectives


def effective_of(task: Task) -> Callable[[dict], dict]:
    """A config as the task's engine runs it (EngineProfile.effective)."""
    profile = profile_for(task.engine.name)
    return lambda config: profile.effective(config, task.engine.args)


def distinct_count(space: dict[str, Any], effective: Callable[[dict], dict]) -> int | None:
    """How many configs of `space` the engine runs differently (None: unbounded); a space too
    large to list is counted as it is written."""
    size = space_size(space)
    if size is None or size > 100_000:
        return size
    return len({spelling(effective(config)) for config in grid_points(space)})


def num_trials(task: Task) -> int:
    """Trials Ray Tune should create: the searched ones (the whole grid for grid; never more than
    the space's configs, as no config runs twice: DistinctConfigs) plus the baseline."""
    size = distinct_count(task.search_space, effective_of(task))
    if task.search.algorithm == "grid":
        return size + (1 if task.search.baseline else 0)
    if size is not None:  # initial_points run as listed: a point listed twice runs twice
        listed = [json.dumps(point, sort_keys=True, default=str) for point in task.search.initial_points]
        size += len(listed) - len(set(listed))
    searched = min(task.search.num_samples, size or math.inf)
    return searched + (1 if task.search.baseline else 0)


def build_searcher(task: Task, max_concurrent: int) -> Searcher:
    search = task.search
    cls = registry.searcher_class(search.algorithm)
    effective = effective_of(task)
    points = [dict(point) for point in search.initial_points]
    args = dict(search.algorithm_args)
    if search.algorithm == "hyperopt":
        # HyperOpt samples at random for its first n points; 20 (its default) would be the whole
        # budget of a small run, so start modelling after a third of it.
        args = {"n_initial_points": max(2, min(20, search.num_samples // 3)), "random_state_seed": search.seed,
                "points_to_evaluate": points or None} | args
    elif search.algorithm == "optuna":
        import optuna

        # Optuna's TPE, as Ray builds it, samples at random for its first 10 trials: all of an
        # 8-sample run. Modelling after a third of the budget, as for HyperOpt, reached more of the
        # grid's best in the replay (benchmarks/search_replay.py, 8 samples: 94.2% against 91.2%,
        # random search 91.8%).
        sampler = optuna.samplers.TPESampler(seed=args.pop("seed", search.seed),
                                             n_startup_trials=max(2, search.num_samples // 3))
        args = {"sampler": sampler, "points_to_evaluate": points or None} | args
        if task.objective.secondary:
            # Optuna's TPE sampler optimises several objectives at once (MOTPE): it learns the
            # trade-off, not only the primary objective; each is reported as objectives/<metric>.
            cls = keep_objectives(cls)
            args = {"metric": [f"{OBJECTIVES}/{m}" for m in task.objective.metrics],
                    "mode": ["max" if maximize(m) else "min" for m in task.objective.metrics]} | args
    elif search.algorithm == "random":
        args = {"seed": search.seed, "points_to_evaluate": points} | args
    elif search.algorithm == "grid":
        # Every config runs anyway; settings it would drop are refused, not ignored.
        if points or args:
            field = "initial_points" if points else "algorithm_args"
            raise TaskError(f"search.{field}: grid runs every config of the space, in order, and takes none")
        args = {"points": list({spelling(p): p for p in map(effective, grid_points(task.search_space))}.values())}
    elif points:  # a plug-in searcher: Ray's own convention for points to try first
        args = {"points_to_evaluate": points} | args
    try:
        inner: Searcher = cls(**args)
    except TypeError as error:
        raise TaskError(f"search.algorithm_args: {search.algorithm} does not take these arguments ({error})") from None
    except (AssertionError, ValueError) as error:  # Ray's and the libraries' own checks of their arguments
        raise TaskError(f"search: {search.algorithm} refuses these settings ({_one_line(error)})") from None
    if search.algorithm != "grid":
        inner = DistinctConfigs(inner, task.search_space, search.seed, listed=len(points), effective=effective)
    searcher: Searcher = ConcurrencyLimiter(inner, max_concurrent=max_concurrent)
    if search.baseline:
        searcher = BaselineFirst(searcher, {name: None for name in task.search_space} | {BASELINE_KEY: True})
    # Outermost, so that the baseline (a full-length trial from the start) is on the ladder too.
    keys = {METRIC: True} | {f"{OBJECTIVES}/{m}": maximize(m) for m in task.objective.metrics}
    return ComparableScores(searcher, keys)


def build_scheduler(task: Task) -> TrialScheduler:
    search = task.search
    cls = spare_baseline(registry.scheduler_class(search.scheduler))
    stages = len(task.benchmark.concurrency)
    defaults: dict = {}
    if search.scheduler in ("asha", "hyperband"):
        defaults = {"time_attr": TIME_ATTR, "max_t": stages, "grace_period": search.grace_period,
                    "reduction_factor": search.reduction_factor}
        if search.scheduler == "hyperband":
            defaults["brackets"] = 3
    elif search.scheduler == "median":
        defaults = {"time_attr": TIME_ATTR, "grace_period": search.grace_period, "min_samples_required": 3}
    if search.scheduler in ("asha", "hyperband", "median") and search.grace_period > stages:
        raise TaskError(f"search.grace_period: {search.grace_period} stages, but benchmark.concurrency has {stages}")
    try:
        return cls(**(defaults | search.scheduler_args))
    except TypeError as error:
        raise TaskError(f"search.scheduler_args: {search.scheduler} does not take these arguments ({error})") from None
    except (AssertionError, ValueError) as error:  # Ray's own checks of the scheduler's arguments
        raise TaskError(f"search: the {search.scheduler} scheduler refuses these settings ({_one_line(error)})") from None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class NoImprovementStopper(SessionBound, Stopper, Callback):
    """Stops the search once `patience` trials in a row have ended without a new best score, each
    judged on the value the searcher is told (StageLadder): a trial stopped early is no new best."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = float("-inf")
        self.since_best = 0
        self.ladder = StageLadder({METRIC: True})
        self.bind()  # one object as callback and stopper, also on --resume (tuner/session.py)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.ladder.observe(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        score = self.ladder.ended(trial.trial_id, result).get(METRIC, result.get(METRIC, float("-inf")))
        if trial.config.get(BASELINE_KEY):
            return  # on the ladder (a full-length reference), but no candidate for a new best
        if score > self.best:
            self.best, self.since_best = score, 0
        else:
            self.since_best += 1

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.since_best += 1

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.since_best >= self.patience


class FailureGuard(SessionBound, Stopper, Callback):
    """Stops the run after `limit` trials in a row failed (not infeasible: failed to deploy or to
    measure): then something is wrong beyond any one config, and `reason` says what. A trial that
    found its failure to be the setup's (`setup_failure`: the engine fails even without the tuned
    flags) stops the run at once: no config can avoid it; so does a trial whose Ray worker was lost
    again after Ray ran it a second time (a dead node or worker is the infrastructure's failure,
    not the config's: the searcher only hears that the trial errored, never a score)."""

    PLACES_CHECKED_EVERY_S = 10.0
    STRANDED_FOR_S = 30.0  # nothing running and a trial no live node can hold, this long: stop

    def __init__(self, limit: int, label: str = "trial"):
        self.limit = limit
        self.label = label  # what its messages call a trial ("confirm" for a re-measurement)
        self.failures: list[str] = []  # first lines of the errors of the current streak
        self.setup_failure: str | None = None
        self.places_checked = 0.0
        self.stranded_since: float | None = None
        self.bind()  # one object as callback and stopper, also on --resume (tuner/session.py)

    def on_step_begin(self, iteration, trials, **info) -> None:
        """A Ray node lost (or gone from the cluster) can leave trials whose claim no live node can
        hold: Ray keeps them pending, the run would wait forever. Once nothing else runs (the
        running trials end first), a trial stranded for STRANDED_FOR_S stops the run, saying so
        (the node may come back meanwhile: `--resume` goes on)."""
        now = time.monotonic()
        if self.setup_failure or now - self.places_checked < self.PLACES_CHECKED_EVERY_S:
            return
        self.places_checked = now
        stranded = None
        if not any(trial.status == "RUNNING" for trial in trials):
            try:
                nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
            except Exception:  # Ray's control store not answering now: asked again at the next check
                return
            stranded = next(((trial, why) for trial in trials if trial.status == "PENDING"
                             if (why := shortfall(trial.placement_group_factory.required_resources, nodes))), None)
        if stranded is None:
            self.stranded_since = None
        elif self.stranded_since is None:
            self.stranded_since = now
        elif now - self.stranded_since >= self.STRANDED_FOR_S:
            trial, why = stranded
            self.setup_failure = (f"{self.label} {trial_number(trial)} {why}, and has waited {now - self.stranded_since:.0f} s "
                                  f"with nothing else running: a Ray node it could run on was lost or left the "
                                  f"cluster (continue with --resume once it is back)")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        error = result.get("error")
        self.failures = self.failures + [error.splitlines()[0]] if error else []
        self.setup_failure = self.setup_failure or result.get("setup_failure")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        lost = lost_worker(trial_error(trial))
        if lost:
            # Ray ran the trial again once already (FailureConfig) and lost it again: the cluster is failing.
            self.setup_failure = self.setup_failure or f"{lost}, twice for the same trial; the cluster, not the configs, is failing"
        else:
            self.failures.append("the trial raised an error (see its error.txt in the Ray experiment folder)")

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.setup_failure is not None or len(self.failures) >= self.limit

    @property
    def reason(self) -> str | None:
        if self.setup_failure:
            return f"stopped: {self.setup_failure}"
        if not self.stop_all():
            return None
        streak = self.failures[-self.limit:]
        common = max(set(streak), key=streak.count)
        if streak.count(common) == len(streak):
            return (f"stopped: the last {len(streak)} trials all failed with the same error, so the problem is likely "
                    f"not the configs but the setup (engine, model, benchmark or cluster): {common}")
        return f"stopped: the last {len(streak)} trials failed (search.max_consecutive_failures); the most common error: {common}"
