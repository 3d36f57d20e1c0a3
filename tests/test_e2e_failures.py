"""Runs where trials fail: a broken SLO, a flag the engine rejects, genai-bench failing, an engine
that crashes mid-benchmark, and a run stopped after too many failures in a row. Each failed trial
keeps a short reason; no engine is left. Real engine, real genai-bench, real Ray."""

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest
import yaml

from llm_autotuner.cluster.procs import start_time
from llm_autotuner.cluster.records import EngineRecord, engine_records
from tests.conftest import Driver, engine_processes, instant_engine

pytestmark = pytest.mark.e2e


def run_task(tmp_path, **overrides):
    served = f"fail-{uuid.uuid4().hex[:8]}"
    task = {
        "name": "no-winner",
        "model": {"path": "builtin:smollm2", "name": served},
        "engine": {"name": "llama.cpp", "args": {"ctx-size": 1024, "threads": 1}},
        "search_space": {"parallel": [2, 4]},
        "benchmark": {"traffic_scenario": "D(32,16)", "concurrency": [2, 4], "max_requests_per_stage": 4},
        "search": {"num_samples": 1, "seed": 0, "confirm_repeats": 0},
        "results_dir": str(tmp_path),
    } | overrides
    served = task["model"].get("name", served)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    completed = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path), "--no-dashboard"],
                               capture_output=True, text=True, timeout=600)
    results = json.loads((tmp_path / "no-winner" / "results.json").read_text())
    assert engine_processes(served) == set()
    return completed, results


def test_a_broken_slo_makes_every_trial_infeasible(tmp_path):
    completed, results = run_task(tmp_path, slos={"ttft_p50": 0.0001})
    assert completed.returncode == 1
    assert "No trial completed every stage" in completed.stdout
    for trial in results["all_results"]:
        assert trial["status"] == "infeasible"
        assert trial["stages_completed"] == 1  # stopped at the first stage that broke it
        assert trial["infeasible_because"].startswith("ttft_p50 ")
        assert trial["infeasible_because"].endswith("> 0.0001 s at concurrency 2")
    assert results["best_result"] is None
    # The closing line names only the files the run wrote: no winner, no launch line.
    closing = next(line for line in completed.stdout.splitlines() if line.startswith("Results: "))
    assert "best_command.txt" not in closing and "results.json" in closing
    assert not (tmp_path / "no-winner" / "best_command.txt").exists()


def test_a_flag_the_engine_rejects_fails_those_trials_and_the_search_goes_on(tmp_path):
    # A value the help does not limit (validate refuses those it does: tests/cluster/test_engines.py)
    completed, results = run_task(tmp_path, search_space={"parallel": [2], "flash-attn": ["maybe"]})
    assert completed.returncode == 0, completed.stderr
    baseline, tuned = results["all_results"]
    assert baseline["status"] == "completed"  # the engine starts without the flag: the config is to blame
    assert tuned["status"] == "failed"
    assert "DeploymentError: engine exited with code 1 before it was ready" in tuned["error"]
    assert "unknown value for --flash-attn: 'maybe'" in tuned["error"]  # llama-server's own words



def test_a_config_whose_flags_the_engine_refuses_together_is_skipped_without_starting_it(tmp_path):
    """llama-server refuses a quantized V cache with flash attention off (seen: it exits at start).
    That config is not deployed: it is infeasible with the rule's words, and its engine never ran."""
    refused_words = ("sets --cache-type-v q8_0 with --flash-attn off, which llama.cpp refuses at start "
                     "(a quantized V cache needs flash attention)")
    completed, results = run_task(
        tmp_path, engine={"name": "llama.cpp", "args": {"ctx-size": 1024, "threads": 1, "flash-attn": "off"}},
        search_space={"cache-type-v": ["f16", "q8_0"]},
        search={"algorithm": "grid", "scheduler": "none", "baseline": False, "confirm_repeats": 0})
    assert completed.returncode == 0, completed.stderr
    note = f"[autotuner] note: search_space: some configs are skipped as infeasible, not deployed: one {refused_words}"
    assert note in completed.stdout
    trials = {trial["parameters"]["cache-type-v"]: trial for trial in results["all_results"]}
    refused = trials["q8_0"]
    assert refused["status"] == "infeasible" and refused["stages_completed"] == 0
    assert refused["infeasible_because"] == f"the config {refused_words}"
    assert not (tmp_path / "no-winner" / "trials" / refused["trial_id"] / "engine_argv.json").exists()  # never started
    assert trials["f16"]["status"] == "completed"
    assert (tmp_path / "no-winner" / "trials" / trials["f16"]["trial_id"] / "engine_argv.json").is_file()

def test_a_fixed_flag_the_engine_rejects_stops_the_run_at_the_first_trial(tmp_path):
    completed, results = run_task(tmp_path, engine={"name": "llama.cpp", "args": {"flash-attn": "maybe"}},
                                  search={"num_samples": 6, "seed": 0, "confirm_repeats": 0})
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert results["total_experiments"] == 1 and results["all_results"][0]["status"] == "failed"
    message = completed.stderr.strip().splitlines()[-1]
    assert message.startswith("autotuner: stopped: the engine fails at start with no tuned flags (engine.args only): ")
    assert "unknown value for --flash-attn: 'maybe'" in message


def truncated_model(tmp_path, smollm2):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(open(smollm2, "rb").read(20 << 20))  # metadata whole, tensors cut off
    return truncated


def test_a_model_no_config_can_load_stops_the_run_at_the_first_trial(tmp_path, smollm2, tokenizer):
    model = {"path": str(truncated_model(tmp_path, smollm2)), "name": f"cut-{uuid.uuid4().hex[:8]}",
             "tokenizer": tokenizer}
    completed, results = run_task(tmp_path, model=model,
                                  search={"num_samples": 6, "seed": 0, "baseline": False, "confirm_repeats": 0})
    assert completed.returncode == 2, completed.stderr
    assert results["total_experiments"] == 1 and results["all_results"][0]["status"] == "failed"
    message = completed.stderr.strip().splitlines()[-1]
    assert message.startswith("autotuner: stopped: the engine fails at start whatever its tuned flags "
                              "(also with engine.args only): engine exited with code 1 before it was ready: "), message
    assert "model is corrupted or incomplete" in message  # llama.cpp's own words


def test_a_model_whose_tokenizer_cannot_be_read_stops_the_run_with_one_line(tmp_path, smollm2):
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({"name": "cut", "model": {"path": str(truncated_model(tmp_path, smollm2))},
                                    "engine": {"name": "llama.cpp"}, "search_space": {"parallel": [1, 2]},
                                    "results_dir": str(tmp_path)}))
    completed = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(task), "--no-dashboard"], capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1, completed.stderr
    assert completed.stderr.startswith("autotuner: error: model.path: cannot read the tokenizer from ")


def test_a_binary_that_dies_by_sigill_stops_the_run_before_its_first_trial(tmp_path):
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\nkill -ILL $$\n")
    binary.chmod(0o755)
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({"name": "sigill", "model": {"path": "builtin:smollm2"},
                                    "engine": {"name": "llama.cpp"}, "search_space": {"parallel": [1, 2]},
                                    "results_dir": str(tmp_path)}))
    completed = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(task), "--no-dashboard"], capture_output=True,
                               text=True, timeout=300, env={**os.environ, "LLAMA_SERVER": str(binary)})
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1, completed.stderr  # one line, no traceback
    assert completed.stderr.startswith(f"autotuner: error: LLAMA_SERVER={binary} does not run on this machine: ")
    assert "killed by SIGILL (illegal instruction) at start: this llama-server uses CPU instructions this " \
           "machine cannot run" in completed.stderr
    assert not (tmp_path / "sigill" / "trials").exists()  # no trial started


def test_genai_bench_failing_fails_the_trial_with_its_reason(tmp_path):
    tokenizer = tmp_path / "empty-tokenizer"
    tokenizer.mkdir()
    completed, results = run_task(tmp_path, model={"path": "builtin:smollm2", "tokenizer": str(tokenizer)},
                                  search={"num_samples": 1, "baseline": False, "confirm_repeats": 0})
    assert completed.returncode == 1
    [trial] = results["all_results"]
    assert trial["status"] == "failed"
    assert trial["error"].startswith("BenchmarkError: genai-bench exited with code")
    assert "tokenizer" in trial["error"].lower(), trial["error"]


def test_an_engine_crash_mid_benchmark_fails_that_trial_and_the_search_goes_on(tmp_path):
    served = f"crash-{uuid.uuid4().hex[:8]}"
    task = {
        "name": "crash",
        "model": {"path": "builtin:smollm2", "name": served},
        # The instant stand-in: a crash is the property, not what the engine computes.
        "engine": {"name": "llama.cpp", "binary": str(instant_engine(tmp_path / "engine", delay_s=0.2)),
                   "args": {"ctx-size": 1024, "threads": 1}},
        "search_space": {"parallel": [2]},
        "benchmark": {"traffic_scenario": "D(32,16)", "concurrency": [2, 4, 8], "max_requests_per_stage": 8},
        "search": {"algorithm": "grid", "scheduler": "none", "confirm_repeats": 0},
        "results_dir": str(tmp_path),
    }
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    with Driver(path) as driver:
        driver.read_until("trial 1: stage 1/3")  # then the baseline's engine dies
        for pid in engine_processes(served):
            os.kill(pid, signal.SIGKILL)
        output = driver.finish()
    assert driver.process.returncode == 0, output[-3000:]
    results = json.loads((tmp_path / "crash" / "results.json").read_text())
    crashed, tuned = results["all_results"]
    assert crashed["status"] == "failed" and crashed["stages_completed"] == 1
    assert "engine killed by SIGKILL during the benchmark" in crashed["error"], crashed["error"]
    assert tuned["status"] == "completed"
    assert engine_processes(served) == set()


def test_a_run_first_kills_what_an_earlier_killed_run_of_the_task_left(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the records, inherited by the run
    leftover = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        EngineRecord("killed-run", "no-winner", "t1", leftover.pid, start_time(leftover.pid), "llama-server").save()
        completed, _ = run_task(tmp_path, engine={"name": "llama.cpp", "args": {"flash-attn": "maybe"}})
        assert (f"removed engine process group {leftover.pid} (no-winner, trial t1) left by run killed-run"
                in completed.stdout)
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert engine_records() == []
    finally:
        leftover.kill()
