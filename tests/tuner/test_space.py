"""Ranges mean one thing: a stepped range is min, min + step, ..., max, and every searcher (HyperOpt,
Optuna, random, grid) proposes values from that set only; a range that does not fit the rule is
refused by validation, before a run starts."""

import pytest
from ray.tune.search import Searcher

from llm_autotuner.errors import TaskError
from llm_autotuner.task import parse_task
from llm_autotuner.tuner.search import METRIC, build_searcher
from llm_autotuner.tuner.space import sample, to_ray

SEARCHERS = ["hyperopt", "optuna", "random", "grid"]


def task_with(space, algorithm="hyperopt", **search):
    return parse_task({
        "name": "t",
        "model": {"path": "builtin:smollm2"},
        "engine": {"name": "llama.cpp"},
        "search_space": space,
        "search": {"algorithm": algorithm, "num_samples": 30, "seed": 3, "baseline": False} | search,
    }, "task.yaml")


def proposed(task, count=30):
    """What the task's own searcher proposes, trial after trial, scored so that higher values win
    (a learning searcher is then drawn toward the maximum)."""
    searcher = build_searcher(task, max_concurrent=1)
    searcher.set_search_properties(METRIC, "max", to_ray(task.search_space))
    configs = []
    for number in range(count):
        config = searcher.suggest(f"t{number}")
        if config is None or config == Searcher.FINISHED:
            break
        configs.append(config)
        searcher.on_trial_complete(f"t{number}", {METRIC: sum(float(v) for v in config.values())})
    return configs


@pytest.mark.parametrize("algorithm", SEARCHERS)
def test_a_stepped_int_range_is_min_plus_whole_steps_in_every_searcher(algorithm):
    # Ray's qrandint would round to multiples of 4 (4, 8, ..., 20): values the grid never tries.
    configs = proposed(task_with({"x": {"type": "int", "min": 3, "max": 19, "step": 4}}, algorithm))
    values = {config["x"] for config in configs}
    assert values <= {3, 7, 11, 15, 19}
    assert 19 in values
    assert all(type(config["x"]) is int for config in configs)


@pytest.mark.parametrize("algorithm", SEARCHERS)
def test_step_1_reaches_the_maximum(algorithm):
    configs = proposed(task_with({"x": {"type": "int", "min": 1, "max": 4, "step": 1}}, algorithm))
    values = {config["x"] for config in configs}
    assert values <= {1, 2, 3, 4}
    assert 4 in values


@pytest.mark.parametrize("algorithm", SEARCHERS)
def test_an_unstepped_int_range_is_min_to_max_inclusive(algorithm):
    for spec in ({"type": "int", "min": 1, "max": 4}, {"type": "int", "min": 1, "max": 4, "log": True}):
        values = {config["x"] for config in proposed(task_with({"x": spec}, algorithm))}
        assert values <= {1, 2, 3, 4}
        assert 4 in values


@pytest.mark.parametrize("algorithm", SEARCHERS)
def test_a_stepped_float_range_gives_the_decimal_values(algorithm):
    # Bounds that are not multiples of the step (Ray's quniform refuses 0.05 with step 0.1).
    configs = proposed(task_with({"x": {"type": "float", "min": 0.05, "max": 0.45, "step": 0.1}}, algorithm))
    values = {config["x"] for config in configs}
    assert values <= {0.05, 0.15, 0.25, 0.35, 0.45}  # exact: 0.35, not 0.35000000000000003
    assert 0.45 in values


def test_the_grid_and_the_samplers_share_one_set_of_values():
    space = {"a": {"type": "int", "min": 3, "max": 19, "step": 4}, "b": {"type": "float", "min": 0.1, "max": 0.3, "step": 0.1}}
    grid = proposed(task_with(space, "grid"))
    assert [(c["a"], c["b"]) for c in grid[:3]] == [(3, 0.1), (3, 0.2), (3, 0.3)] and len(grid) == 15
    task = task_with(space)
    for _ in range(50):
        assert sample(task.search_space) in grid


@pytest.mark.parametrize("spec, message", [
    ({"type": "int", "min": 3, "max": 20, "step": 4}, "search_space.x: max - min (17) is not a multiple of step (4)"),
    ({"type": "float", "min": 0.7, "max": 0.9, "step": 0.15},
     "search_space.x: max - min (0.2) is not a multiple of step (0.15)"),
    ({"type": "int", "min": 32, "max": 512, "step": 32, "log": True}, "search_space.x: step and log: true together"),
    ({"type": "int", "min": 0, "max": 100_000, "step": 2}, "search_space.x: 50001 values from min to max"),
])
def test_a_range_off_the_rule_is_refused_naming_the_field(spec, message):
    with pytest.raises(TaskError) as caught:
        task_with({"x": spec})
    assert str(caught.value).startswith(f"task.yaml: {message}")
    assert "\n" not in str(caught.value)


def test_an_initial_point_between_steps_is_refused():
    with pytest.raises(TaskError, match=r"search.initial_points.0.x: 33 is outside the search space \(32, 64, ..., 512\)"):
        task_with({"x": {"type": "int", "min": 32, "max": 512, "step": 32}}, initial_points=[{"x": 33}])
    assert proposed(task_with({"x": {"type": "float", "min": 0.5, "max": 0.9, "step": 0.1}},
                              initial_points=[{"x": 0.7}]))[0] == {"x": 0.7}
