"""A search never spends a trial on a config it has already tried: the searcher chain the driver
builds (build_searcher) around real HyperOpt, Optuna and random search, or around a scripted
Searcher, fed as Ray Tune feeds it (suggest, then on_trial_complete with the trial's last result)."""

import pickle

import pytest
from ray.tune.search import Searcher
from ray.tune.search.search_generator import SearchGenerator

from llm_autotuner.task import parse_task
from llm_autotuner.tuner.search import build_searcher, num_trials
from llm_autotuner.tuner.space import to_ray

SPACE = {"parallel": [1, 2], "threads": [1, 2, 4]}  # 6 configs


class Scripted(Searcher):
    """Suggests `parallel` from its script in turn (the last value for ever) and keeps what it is told."""

    def __init__(self, script=(1, 1, 2)):
        super().__init__()
        self.script, self.position, self.told = list(script), 0, {}

    def set_search_properties(self, metric, mode, config, **spec):
        self._metric, self._mode = metric, mode
        return True

    def suggest(self, trial_id):
        value = self.script[min(self.position, len(self.script) - 1)]
        self.position += 1
        return {"parallel": value}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told[trial_id] = None if error else result["score"]

    def save(self, checkpoint_path):
        with open(checkpoint_path, "wb") as file:
            pickle.dump((self.position, self.told), file)

    def restore(self, checkpoint_path):
        with open(checkpoint_path, "rb") as file:
            self.position, self.told = pickle.load(file)


def task(algorithm, space=SPACE, **search):
    return parse_task({"name": "t", "model": {"path": "/models/m.gguf"}, "engine": {"name": "llama.cpp"},
                       "search_space": space, "benchmark": {"concurrency": [1, 4]},
                       "objective": {"metric": "output_throughput"},
                       "search": {"algorithm": algorithm, "num_samples": 20, "seed": 3, "baseline": False} | search})


def started(a_task, max_concurrent=1):
    searcher = build_searcher(a_task, max_concurrent=max_concurrent)
    searcher.set_search_properties("score", "max", to_ray(a_task.search_space))
    innermost = searcher
    while hasattr(innermost, "searcher"):
        innermost = innermost.searcher
    return searcher, innermost


def complete(searcher, trial_id, score):
    """A trial that ran both stages and measured `score`."""
    searcher.on_trial_complete(trial_id, result={"stage": 2, "score": score, "outcome": "completed", "error": None})


def speed(config):
    return 10.0 * config["parallel"] + config["threads"]


def one_at_a_time(searcher, count):
    """`count` trials, each suggested and completed before the next: their (parallel, threads)."""
    tried = []
    for number in range(count):
        config = searcher.suggest(f"t{number}")
        tried.append((config["parallel"], config["threads"]))
        complete(searcher, f"t{number}", speed(config))
    return tried


@pytest.mark.parametrize("algorithm", ["hyperopt", "optuna", "random"])
def test_every_trial_is_a_new_config_until_the_space_is_spent(algorithm):
    a_task = task(algorithm)  # 20 samples asked of a 6-config space
    assert num_trials(a_task) == 6  # what the driver asks Ray Tune for
    searcher, _ = started(a_task)
    tried = one_at_a_time(searcher, 6)
    assert sorted(tried) == [(p, t) for p in (1, 2) for t in (1, 2, 4)]
    assert searcher.suggest("t6") == Searcher.FINISHED


def test_hyperopt_learns_the_first_runs_outcome_for_each_config_it_suggests_again():
    searcher, hyperopt = started(task("hyperopt", num_samples=6), max_concurrent=2)
    running, tried = {}, set()
    for number in range(6):  # two trials at a time: a repeat may come while its first run is running
        running[f"t{number}"] = searcher.suggest(f"t{number}")
        tried.add((running[f"t{number}"]["parallel"], running[f"t{number}"]["threads"]))
        if len(running) == 2 or number == 5:
            for trial_id in list(running):
                complete(searcher, trial_id, speed(running.pop(trial_id)))
    assert len(tried) == 6
    points = hyperopt._hpopt_trials.trials
    assert len(points) > 6, "no repeat was suggested: the test shows nothing"
    # Every point HyperOpt suggested was told a loss (a repeat, its first run's): none is left open.
    assert all(point["result"]["status"] == "ok" and point["result"]["loss"] < 0 for point in points)


def test_a_repeat_is_told_the_outcome_when_the_first_run_ends():
    searcher, scripted = started(task("tests.tuner.test_distinct_configs:Scripted", space={"parallel": [1, 2, 3]}),
                                 max_concurrent=2)
    assert searcher.suggest("a") == {"parallel": 1}
    assert searcher.suggest("b") == {"parallel": 2}  # its first suggestion, 1 again, is running as "a"
    complete(searcher, "b", 20.0)
    assert scripted.told == {"b-repeat1": 20.0}  # the repeat waits for "a"
    complete(searcher, "a", 10.0)
    assert scripted.told == {"b-repeat1": 20.0, "a": 10.0, "b": 10.0}


def test_a_searcher_that_insists_on_a_tried_config_gets_an_untried_one_and_then_the_search_ends():
    searcher, scripted = started(task("tests.tuner.test_distinct_configs:Scripted", space={"parallel": [1, 2, 3]},
                                      algorithm_args={"script": [2]}))
    assert searcher.suggest("a") == {"parallel": 2}
    complete(searcher, "a", 20.0)
    others = [searcher.suggest("b")["parallel"]]
    complete(searcher, "b", 5.0)
    others.append(searcher.suggest("c")["parallel"])
    complete(searcher, "c", 5.0)
    assert sorted(others) == [1, 3]
    assert searcher.suggest("d") == Searcher.FINISHED
    assert set(scripted.told) == {"a"} | {f"{t}-repeat{n}" for t in "bc" for n in range(1, 20)} | {"b", "c"}
    assert set(scripted.told.values()) == {20.0}  # its repeats of 2 learned 2's outcome; 1 and 3 it never suggested


def test_what_was_tried_survives_a_resume(tmp_path):
    a_task = task("tests.tuner.test_distinct_configs:Scripted", space={"parallel": [1, 2, 3]},
                  algorithm_args={"script": [1, 2, 1, 3]})
    searcher, _ = started(a_task)
    for trial_id in ("a", "b"):
        complete(searcher, trial_id, float(searcher.suggest(trial_id)["parallel"]))
    SearchGenerator(searcher).save_to_dir(str(tmp_path), session_str="s")
    restored, scripted = started(a_task)
    SearchGenerator(restored).restore_from_dir(str(tmp_path))
    assert restored.suggest("c") == {"parallel": 3}  # not 1 again
    assert scripted.told["c"] == 1.0


@pytest.mark.parametrize("how", ["lost worker", "refused by the cluster"])
def test_a_config_whose_run_was_not_measured_through_no_fault_of_its_own_may_run_again(how):
    searcher, scripted = started(task("tests.tuner.test_distinct_configs:Scripted", space={"parallel": [1, 2, 3]}))
    assert searcher.suggest("a") == {"parallel": 1}
    if how == "lost worker":  # Ray ended the trial with an error
        searcher.on_trial_complete("a", error=True)
    else:  # the trial reported the failure (trainables/trial.py)
        searcher.on_trial_complete("a", result={"stage": 0, "score": -1e9, "outcome": "failed-infrastructure",
                                                "error": "InfrastructureError: quota"})
    assert searcher.suggest("b") == {"parallel": 1}  # run again
    complete(searcher, "b", 10.0)
    assert scripted.told["b"] == 10.0
    assert searcher.suggest("c") == {"parallel": 2}


@pytest.mark.parametrize("algorithm", ["hyperopt", "optuna", "random"])
def test_initial_points_run_as_listed_even_a_point_listed_twice(algorithm):
    point = {"parallel": 2, "threads": 4}
    a_task = task(algorithm, num_samples=8, initial_points=[point, point, {"parallel": 1, "threads": 1}])
    assert num_trials(a_task) == 7  # the 6 configs, one of them twice
    searcher, _ = started(a_task)
    tried = one_at_a_time(searcher, 7)
    assert tried[:3] == [(2, 4), (2, 4), (1, 1)]
    assert sorted(set(tried)) == [(p, t) for p in (1, 2) for t in (1, 2, 4)]
    assert searcher.suggest("t7") == Searcher.FINISHED


def test_configs_the_engine_runs_alike_are_one_config_handed_out_as_it_runs_them():
    """llama.cpp runs a ubatch above the batch as the batch (EngineProfile.effective; the real
    engine's log says so: tests/cluster/test_engines.py): {batch 64, ubatch 256} is {64, 64}, run once
    and reported as what ran. 6 configs as written, 5 as run."""
    space = {"batch-size": [64, 256], "ubatch-size": [32, 64, 256]}
    as_run = [(64, 32), (64, 64), (256, 32), (256, 64), (256, 256)]
    for algorithm in ("hyperopt", "random", "grid"):
        a_task = task(algorithm, space=space)
        assert num_trials(a_task) == 5, algorithm
        searcher, _ = started(a_task)
        tried = []
        for number in range(5):
            config = searcher.suggest(f"t{number}")
            tried.append((config["batch-size"], config["ubatch-size"]))
            complete(searcher, f"t{number}", float(number))
        assert sorted(tried) == as_run, (algorithm, tried)
        assert searcher.suggest("t5") in (Searcher.FINISHED, None), algorithm
