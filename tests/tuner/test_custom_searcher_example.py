"""The custom searcher shipped in examples/custom-searcher walks one parameter at a time."""

from ray import tune
from ray.tune.search import Searcher


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
