"""The custom searcher shipped in examples/custom-searcher walks one parameter at a time, and
keeps its state across --resume (a searcher that cannot is refused)."""

import subprocess
import sys

import pytest
import yaml
from ray import tune
from ray.tune.search import Searcher

from llm_autotuner.errors import TaskError
from llm_autotuner.task import parse_task
from llm_autotuner.tuner.search import build_searcher


def test_coordinate_descent_example(monkeypatch):
    monkeypatch.syspath_prepend("examples/custom-searcher")
    from my_searcher import CoordinateDescent

    searcher = CoordinateDescent(order=["threads", "parallel"])
    assert searcher.set_search_properties("score", "max", {"threads": tune.choice([1, 2]),
                                                           "parallel": tune.choice([1, 4, 8])})
    first = [searcher.suggest("a"), searcher.suggest("b")]
    assert first == [{"threads": 1, "parallel": 1}, {"threads": 2, "parallel": 1}]
    assert searcher.suggest("c") is None  # waits for the threads trials
    searcher.on_trial_complete("a", {"score": 10.0})
    searcher.on_trial_complete("b", {"score": 20.0})
    assert [searcher.suggest("c"), searcher.suggest("d")] == [{"threads": 2, "parallel": 4}, {"threads": 2, "parallel": 8}]
    searcher.on_trial_complete("c", {"score": 15.0})
    searcher.on_trial_complete("d", {"score": 30.0})
    assert searcher.suggest("e") == Searcher.FINISHED
    assert searcher.best == {"threads": 2, "parallel": 8}


def test_coordinate_descent_example_resumes_where_it_was(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend("examples/custom-searcher")
    from my_searcher import CoordinateDescent

    space = {"threads": tune.choice([1, 2]), "parallel": tune.choice([1, 4, 8])}
    searcher = CoordinateDescent(order=["threads", "parallel"])
    searcher.set_search_properties("score", "max", space)
    searcher.suggest("a"), searcher.suggest("b")
    searcher.on_trial_complete("a", {"score": 10.0})
    searcher.on_trial_complete("b", {"score": 20.0})
    searcher.save(str(tmp_path / "state.pkl"))
    restored = CoordinateDescent()
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.suggest("c") == {"threads": 2, "parallel": 4}


def test_resume_is_refused_for_a_searcher_that_cannot_save_its_state(tmp_path):
    task = {"name": "custom", "model": {"path": "builtin:smollm2"}, "engine": {"name": "llama.cpp"},
            "search_space": {"parallel": [1, 2]},
            "search": {"algorithm": "tests.tuner.test_search_e2e:ListedSearcher", "algorithm_args": {"configs": []}},
            "results_dir": str(tmp_path)}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    (tmp_path / "custom" / "tune").mkdir(parents=True)
    (tmp_path / "custom" / "tune" / "tuner.pkl").write_bytes(b"an interrupted run")
    run = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(tmp_path / "task.yaml"), "--resume"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "autotuner: error: --resume: search.algorithm tests.tuner.test_search_e2e:ListedSearcher has no "
        "save/restore, so its state was not kept; run again without --resume"]


def test_initial_points_reach_a_plug_in_searcher_or_are_refused(monkeypatch):
    # They were dropped without a word for any `package.module:Class` searcher.
    def task(algorithm):
        return parse_task({"name": "t", "model": {"path": "builtin:smollm2"}, "engine": {"name": "llama.cpp"},
                           "search_space": {"threads": [1, 2], "parallel": [1, 4, 8]},
                           "search": {"algorithm": algorithm, "initial_points": [{"threads": 2, "parallel": 8}]}})

    searcher = build_searcher(task("ray.tune.search.optuna:OptunaSearch"), 1)
    searcher.set_search_properties("score", "max", {"threads": tune.choice([1, 2]), "parallel": tune.choice([1, 4, 8])})
    searcher.suggest("baseline")
    assert searcher.suggest("first") == {"threads": 2, "parallel": 8}
    monkeypatch.syspath_prepend("examples/custom-searcher")
    with pytest.raises(TaskError, match="points_to_evaluate"):  # a searcher that takes no such points
        build_searcher(task("my_searcher:CoordinateDescent"), 1)
