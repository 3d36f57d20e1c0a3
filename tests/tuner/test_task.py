"""Task-file validation: every mistake is one line naming the field; exit 2 from the CLI."""

import copy
import json
import subprocess
import sys

import pytest

from tuner.errors import TaskError
from tuner.task import FloatRange, IntRange, load_task, parse_task

VALID = {
    "name": "t",
    "model": {"path": "builtin:smollm2"},
    "engine": {"name": "llama.cpp"},
    "search_space": {"threads": [1, 2], "ubatch-size": {"type": "int", "min": 32, "max": 512, "step": 32}},
}


def with_change(**change):
    task = copy.deepcopy(VALID)
    task.update(change)
    return task


def test_valid_task_gets_defaults():
    task = parse_task(VALID)
    assert task.objective.metric == "output_throughput"
    assert task.search.algorithm == "hyperopt" and task.search.scheduler == "asha"
    assert task.benchmark.concurrency == [1, 4, 8]
    assert isinstance(task.search_space["ubatch-size"], IntRange)
    assert task.search_space["threads"] == [1, 2]


@pytest.mark.parametrize("change, expected", [
    ({"engine": {"name": "llamacpp"}}, "engine.name: Input should be 'llama.cpp', 'sglang' or 'vllm'"),
    ({"search_spac": {}}, "search_spac: unknown key; did you mean 'search_space'?"),
    ({"search_space": {}}, "search_space: needs at least one parameter"),
    ({"search_space": {"t": {"type": "int", "min": 4, "max": 2}}}, "search_space.t: min must be below max (4 >= 2)"),
    ({"search_space": {"t": {"type": "int", "min": 2, "max": 2}}}, "search_space.t: min must be below max"),
    ({"search_space": {"t": {"min": 1, "max": 2}}}, "search_space.t: a range needs 'type: int' or 'type: float'"),
    ({"search_space": {"t": {"type": "int", "min": 1, "max": 8, "stepp": 1}}}, "search_space.t.stepp: unknown key"),
    ({"search_space": {"t": {"type": "float", "min": 0, "max": 1, "log": True}}}, "search_space.t: a log range needs min > 0"),
    ({"search_space": {"t": {"type": "int", "min": 1, "max": 4, "step": 8}}}, "search_space.t: step 8 is larger than the range"),
    ({"search_space": {"t": []}}, "search_space.t: List should have at least 1 item"),
    ({"search_space": {"t": 4}}, "search_space.t: must be a list of choices or a range"),
    ({"search_space": {"t": [1, 1]}}, "search_space.t: repeated choices"),
    ({"search_space": {"t": ["--evil"]}}, "search_space.t.0: value '--evil' is not allowed"),
    ({"search_space": {"t": ["a b"]}}, "search_space.t.0: value 'a b' is not allowed"),
    ({"search_space": {"bad flag": [1]}}, "is not a flag name"),
    ({"engine": {"name": "llama.cpp", "args": {"x": "1;rm -rf /"}}}, "engine.args.x: value '1;rm -rf /' is not allowed"),
    ({"objective": {"metric": "output_throughputt"}},
     "objective.metric: unknown metric 'output_throughputt'; did you mean 'output_throughput'?"),
    ({"slos": {"ttft_p90": {"limit": 1.0, "hard": "maybe"}}}, "slos.ttft_p90.hard: Input should be a valid boolean"),
    ({"benchmark": {"concurrency": [1, 4], "stage_weights": [1.0]}}, "benchmark: stage_weights: 1 weights for 2 stages"),
    ({"slos": {"tft_p90": 1}}, "slos.tft_p90: unknown metric 'tft_p90'; did you mean 'ttft_p90'?"),
    ({"slos": {"ttft_p90": -1}}, "slos.ttft_p90: Input should be greater than 0"),
    ({"benchmark": {"concurrency": [0]}}, "benchmark.concurrency.0: Input should be greater than or equal to 1"),
    ({"benchmark": {"concurrency": [4, 4]}}, "benchmark.concurrency: each stage needs its own concurrency"),
    ({"benchmark": {"traffic_scenario": "D(100, 64)"}}, "benchmark.traffic_scenario: 'D(100, 64)' is not a genai-bench scenario"),
    ({"search": {"num_samples": "many"}}, "search.num_samples: Input should be a valid integer"),
    ({"search": {"reduction_factor": 1}}, "search.reduction_factor: Input should be greater than or equal to 2"),
    ({"search": {"initial_points": [{"threads": 3, "ubatch-size": 64}]}}, "search.initial_points.0.threads: 3 is outside"),
    ({"search": {"initial_points": [{"threads": 1}]}}, "search.initial_points.0: missing ubatch-size"),
    ({"name": "bad name"}, "name: 'bad name' must be 1-63 letters"),
    ({"search": {"algorithm": "hyperop"}}, "search.algorithm: unknown 'hyperop'; did you mean 'hyperopt'?"),
    ({"search": {"scheduler": "asha2"}}, "search.scheduler: unknown"),
    ({"search": {"algorithm": "grid"}, "search_space": {"m": {"type": "float", "min": 0.1, "max": 0.9}}},
     "search.algorithm: grid needs a discrete space, but search_space.m is a float range without a step"),
    ({"search": {"patience": 0}}, "search.patience: Input should be greater than or equal to 1"),
    ({"model": {}}, "model.path: required with the local backend"),
    ({"deployment": {"backend": "k8s"}}, "deployment: backend must be 'local' or 'ome'"),
    ({"deployment": {"backend": "ome", "namespace": "NS", "model": "m", "runtime": "r", "gpu_budget": 1}},
     "deployment.namespace: String should match pattern"),
    ({"deployment": {"backend": "ome", "namespace": "ns", "model": "m", "runtime": "r"}},
     "deployment.gpu_budget: required key is missing"),
    ({"benchmark": {"runner": "benchmarkjob"}}, "benchmark.runner: benchmarkjob needs deployment.backend: ome"),
])
def test_bad_task_names_the_field(change, expected):
    with pytest.raises(TaskError) as caught:
        parse_task(with_change(**change), "task.yaml")
    message = str(caught.value)
    assert message.startswith("task.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_ranges_are_parsed_by_type():
    task = parse_task(with_change(search_space={"m": {"type": "float", "min": 0.5, "max": 0.9}}))
    assert isinstance(task.search_space["m"], FloatRange)


def test_json_is_accepted(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(json.dumps(VALID))
    assert load_task(path).name == "t"


@pytest.mark.parametrize("text, expected", [
    ("name: [unclosed", "not valid YAML or JSON at line 1"),
    ("- just\n- a list\n", "the task must be a mapping"),
])
def test_unreadable_files(tmp_path, text, expected):
    path = tmp_path / "task.yaml"
    path.write_text(text)
    with pytest.raises(TaskError, match=expected):
        load_task(path)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], capture_output=True, text=True, timeout=60)


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(with_change(objective={"metric": "speed"})))
    for command in ("validate", "run"):
        result = _cli(command, str(path))
        assert result.returncode == 2
        assert result.stderr.strip().count("\n") == 0
        assert "objective.metric: unknown metric 'speed'" in result.stderr
        assert "Traceback" not in result.stderr


def test_cli_missing_file_exits_2():
    result = _cli("validate", "/nonexistent/task.yaml")
    assert result.returncode == 2
    assert "cannot read the task file" in result.stderr


def test_cli_validates_the_shipped_example():
    result = _cli("validate", "examples/quickstart-cpu.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok (llama.cpp, 5 parameters, 3 stages, 12 trials)" in result.stdout


def test_cli_run_refuses_a_missing_model_before_starting_anything(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(with_change(model={"path": str(tmp_path / "missing.gguf")},
                                           results_dir=str(tmp_path / "results"))))
    result = _cli("run", str(path))
    assert result.returncode == 2
    assert "model.path: " in result.stderr and "is not a file" in result.stderr
    assert not (tmp_path / "results").exists()


def test_cli_run_refuses_a_missing_engine_binary(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(with_change(engine={"name": "llama.cpp", "binary": "/nonexistent/llama-server"},
                                           results_dir=str(tmp_path / "results"))))
    result = _cli("run", str(path))
    assert result.returncode == 2
    assert "engine.binary: /nonexistent/llama-server is not an executable" in result.stderr


def test_grid_points_enumerate_choices_and_stepped_ranges():
    from tuner.task import grid_points

    task = parse_task(with_change(search_space={"a": [1, 2], "b": {"type": "float", "min": 0.5, "max": 0.7, "step": 0.1}},
                                  search={"algorithm": "grid"}))
    assert grid_points(task.search_space) == [{"a": 1, "b": 0.5}, {"a": 1, "b": 0.6}, {"a": 1, "b": 0.7},
                                              {"a": 2, "b": 0.5}, {"a": 2, "b": 0.6}, {"a": 2, "b": 0.7}]


def test_a_custom_searcher_that_cannot_be_imported_says_what_to_install():
    from tuner import registry

    with pytest.raises(TaskError, match="search.algorithm: cannot import no_such_pkg.mod .*pip install no_such_pkg"):
        registry.searcher_class("no_such_pkg.mod:Searcher")
    with pytest.raises(TaskError, match="search.scheduler: ray.tune.search:ConcurrencyLimiter is not a"):
        registry.scheduler_class("ray.tune.search:ConcurrencyLimiter")


def test_cli_overrides_are_validated_like_the_file(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(VALID))
    result = _cli("run", str(path), "--algorithm", "hyperop")
    assert result.returncode == 2
    assert "search.algorithm: unknown 'hyperop'; did you mean 'hyperopt'?" in result.stderr
    result = _cli("run", str(path), "--num-samples", "0")
    assert result.returncode == 2 and "search.num_samples: Input should be greater than or equal to 1" in result.stderr
