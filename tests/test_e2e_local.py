"""End to end on the real CPU engine: `autotuner run` with Ray Tune, llama-server, genai-bench, ASHA.

A small run: the baseline plus three searched trials, two stages each, minimising the time to
first token (p90). Two seeded first points make the ASHA stop deterministic: a strong config (4
slots) reaches stage 1 first, then a weak one (1 slot, one-token micro-batches) is cut there. At
concurrency 4 the weak config queues each request behind up to three whole answers, so its p90
time to first token is 4-6x the strong one's, measured idle and with two busy loops beside it
(2026-12-04). A throughput objective was used until then: on this CPU no flag moves throughput
more than ~1.5x (batching saves FLOPs only up to ~2x at one thread), and under load the weak
config once measured faster. One thread each: llama.cpp's threads spin while they wait for each
other, which a busy machine turns into minutes.
"""

import csv
import json
import re
import shutil
import struct
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
import yaml

from llm_autotuner.cluster.llamacpp_setup import smollm2_gguf
from llm_autotuner.cluster.local import free_port
from tests.browser import Browser
from tests.conftest import engine_processes, until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    served = f"e2e-{uuid.uuid4().hex[:8]}"
    # As a user runs it: from their project folder, the model and the results given relative to it
    # (each trial's engine and genai-bench start in the trial's own folder).
    (root / "models").mkdir()
    (root / "models" / "smollm2.gguf").symlink_to(smollm2_gguf())
    task = {
        "name": "e2e-small",
        "model": {"path": "models/smollm2.gguf", "name": served},
        "engine": {"name": "llama.cpp", "args": {"ctx-size": 2048, "threads": 1}},
        "search_space": {"parallel": [1, 4], "ubatch-size": [1, 512]},
        "benchmark": {"traffic_scenario": "D(32,64)", "concurrency": [4, 8], "max_requests_per_stage": 8},
        "objective": {"metric": "ttft_p90", "secondary": ["output_throughput"]},
        "search": {"num_samples": 3, "seed": 3, "grace_period": 1, "reduction_factor": 2,
                   "initial_points": [{"parallel": 4, "ubatch-size": 512}, {"parallel": 1, "ubatch-size": 1}],
                   "confirm_top_k": 1, "confirm_repeats": 1},
        "results_dir": "results",
    }
    path = root / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    completed = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", "task.yaml", "--no-dashboard"],
                               capture_output=True, text=True, timeout=1500, cwd=root)
    results_dir = root / "results" / "e2e-small"
    return completed, results_dir, served


def test_run_exits_0_and_prints_the_best_config_and_gain(run):
    completed, _, _ = run
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "Best: experiment" in completed.stdout
    assert "Launch: " in completed.stdout
    assert "vs. engine defaults" in completed.stdout or "the engine defaults" in completed.stdout
    assert "Ray dashboard" not in completed.stdout  # --no-dashboard (tests/test_e2e_dashboard.py: with it)
    # Each re-measurement says which finalist it is, as the table and the ranking number them.
    starts = re.findall(r"confirm \d+: start  (.*)", completed.stdout)
    assert starts and all(re.match(r"experiment \d+: ", line) for line in starts), starts
    assert "experiment 1: engine defaults (baseline)" in starts


def test_results_json_holds_every_trial_with_real_metrics(run):
    _, results_dir, _ = run
    results = json.loads((results_dir / "results.json").read_text())
    assert results["task_name"] == "e2e-small"
    assert results["total_experiments"] == 4
    assert results["successful_experiments"] == 4
    trials = results["all_results"]
    assert [t["experiment_id"] for t in trials] == [1, 2, 3, 4]
    assert trials[0]["baseline"] and trials[0]["status"] == "completed"
    assert trials[1]["parameters"] == {"parallel": 4, "ubatch-size": 512}
    for trial in trials:
        assert trial["status"] in ("completed", "stopped-by-scheduler")
        assert trial["error"] is None
        for stage in trial["stages"]:
            assert stage["output_throughput"] > 0
            assert stage["num_requests"] > 0 and stage["error_rate"] == 0
            assert stage["ttft_p50"] > 0 and stage["e2e_p99"] >= stage["e2e_p50"]
        assert [s["concurrency"] for s in trial["stages"]] == [4, 8][:len(trial["stages"])]
    best = results["best_result"]
    # The best config and the baseline were re-measured once each: those runs decide, not the search's.
    confirmed = results["confirmation"]
    assert 1 <= len(confirmed) <= 2 and all(len(c["runs"]) == 1 for c in confirmed)
    assert best["experiment_id"] in [c["experiment_id"] for c in confirmed]
    assert best["objective_score"] == pytest.approx(best["runs"][0])
    assert any(c["search_objective"] == min(t["objective_score"] for t in trials if t["status"] == "completed")
               for c in confirmed)
    assert results["baseline"]["experiment_id"] == 1
    baseline = results["baseline"]["objective_score"]
    # A latency: the gain is how much lower the winner's is.
    assert results["gain_over_baseline"] == pytest.approx(1 - best["objective_score"] / baseline)


def test_asha_stopped_the_weak_config_after_one_stage(run):
    _, results_dir, _ = run
    trials = json.loads((results_dir / "results.json").read_text())["all_results"]
    weak = next(t for t in trials if t["parameters"] == {"parallel": 1, "ubatch-size": 1})
    assert weak["status"] == "stopped-by-scheduler"
    assert weak["stages_completed"] == 1


def test_best_command_and_trials_csv(run):
    _, results_dir, served = run
    command = (results_dir / "best_command.txt").read_text().split()
    assert command[0].endswith("llama-server")
    assert command[command.index("--alias") + 1] == served
    assert command[command.index("--ctx-size") + 1] == "2048"
    rows = list(csv.DictReader((results_dir / "trials.csv").open()))
    assert len(rows) == 4 and {"parallel", "ubatch-size", "status", "objective_score"} <= set(rows[0])
    # The winner is the finalist ranked first on its re-measurements: findable in the CSV alone.
    winner = json.loads((results_dir / "results.json").read_text())["best_result"]
    [first] = [row for row in rows if row["confirmation_rank"] == "1"]
    assert int(first["experiment_id"]) == winner["experiment_id"]
    assert float(first["confirmation_mean"]) == pytest.approx(winner["objective_score"])
    assert (results_dir / "tune").is_dir()
    front = list(csv.DictReader((results_dir / "pareto.csv").open()))
    results = json.loads((results_dir / "results.json").read_text())
    completed = {t["experiment_id"] for t in results["all_results"] if t["status"] == "completed"}
    assert front and {int(row["experiment_id"]) for row in front} <= completed
    # The front holds the search's best on the objective (the winner may come from the re-measurements).
    top = min((t for t in results["all_results"] if t["status"] == "completed"), key=lambda t: t["objective_score"])
    assert str(top["experiment_id"]) in {row["experiment_id"] for row in front}
    for trial in json.loads((results_dir / "results.json").read_text())["all_results"]:
        assert (results_dir / "trials" / trial["trial_id"] / "engine.log").is_file()
    assert not list(results_dir.glob(".reachable-*"))  # the nodes' storage check leaves no file


def test_the_driver_keeps_few_numbers_per_trial_and_results_keep_every_stage_metric(run):
    # Ray Tune's driver holds running statistics of every number of every report of every trial
    # until the run ends (and writes them into its experiment state at each save): per-stage
    # measurements among them made the driver grow 4x faster per trial (docs/benchmarks.md).
    _, results_dir, _ = run
    [state] = (results_dir / "tune").glob("experiment_state-*.json")
    trials = json.loads(state.read_text())["trial_data"]
    tracked = [set(json.loads(run_state)["metric_analysis"]) for _, run_state in trials]
    assert trials and all(keys and not any(key.startswith("metrics/") for key in keys) for keys in tracked), tracked
    assert max(map(len, tracked)) <= 25, tracked
    results = json.loads((results_dir / "results.json").read_text())
    measured = [stage for trial in results["all_results"] for stage in trial["stages"]]
    assert measured and all(stage["output_throughput"] > 0 and stage["ttft_p90"] > 0 for stage in measured)


def test_no_engine_is_left_running(run):
    _, _, served = run
    assert engine_processes(served) == set()


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file; AssertionError if it is not one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_the_report_page_opens_offline_with_every_plot_and_names_the_winner(run):
    _, results_dir, _ = run
    results = json.loads((results_dir / "results.json").read_text())
    plots = sorted(p.name for p in (results_dir / "plots").glob("*.png"))
    assert plots == ["parameters.png", "progress.png", "stages.png", "tradeoff.png"]
    for name in plots:
        width, height = png_size(results_dir / "plots" / name)
        assert width >= 600 and height >= 300 and (results_dir / "plots" / name).stat().st_size > 10_000
    with Browser() as browser:
        browser.open((results_dir / "index.html").as_uri())
        assert browser.wait_for("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert browser.evaluate("document.images.length") == 4 and browser.failed == []
        assert browser.evaluate("document.querySelectorAll('figcaption').length") == 4
        winner = browser.evaluate("document.getElementById('winner').innerText")
        rows = browser.evaluate("Array.from(document.querySelectorAll('#trials tr')).slice(1)"
                                ".map(r => r.cells[0].innerText)")
        browser.screenshot(results_dir / "report-screenshot.png")
    best = results["best_result"]
    assert f"Experiment {best['experiment_id']}" in winner
    if best["experiment_id"] == (results["baseline"] or {}).get("experiment_id"):
        assert "the engine defaults" in winner and "None" not in winner, winner  # not "parallel=None ..."
    else:
        assert all(f"{name}={value}" in winner for name, value in best["parameters"].items())
    scored = [t for t in results["all_results"] if t["objective_score"] is not None]
    unscored = [t for t in results["all_results"] if t["objective_score"] is None]
    assert results["objective"]["direction"] == "minimize"  # ttft_p90: the best is the lowest
    # The re-measured configs first, in the order their means chose the winner; then the other
    # trials that ran every stage, lowest first; then those ASHA cut short (a low-load partial time
    # to first token would otherwise outrank every full run), lowest first.
    finalists = [row["experiment_id"] for row in results["confirmation"]]
    scored = [t for t in scored if t["experiment_id"] not in finalists]
    unscored = [t for t in unscored if t["experiment_id"] not in finalists]
    full = sorted((t for t in scored if t["status"] == "completed"), key=lambda t: t["objective_score"])
    cut = sorted((t for t in scored if t["status"] != "completed"), key=lambda t: t["objective_score"])
    assert rows == [str(key) for key in finalists] + [str(t["experiment_id"]) for t in full + cut + unscored]


def test_the_exported_launch_line_starts_a_server_that_answers(run):
    _, results_dir, served = run
    best = json.loads((results_dir / "best.json").read_text())
    results = json.loads((results_dir / "results.json").read_text())
    assert best["parameters"] == results["best_result"]["parameters"]
    assert best["metrics"]["output_throughput"] > 0 and best["objective"]["value"] > 0
    argv = (results_dir / "best_command.txt").read_text().split()
    assert argv == best["command"].split()
    port = free_port()
    argv[argv.index("--port") + 1] = str(port)
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        assert until(healthy, 60)
        body = json.dumps({"model": served, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read())["choices"][0]["message"]["content"] is not None
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:  # not left running after the test
            server.kill()
            server.wait()


def test_report_of_two_runs_names_what_changed(run, tmp_path):
    _, results_dir, _ = run
    later = tmp_path / "after-upgrade"
    shutil.copytree(results_dir, later, ignore=shutil.ignore_patterns("tune", "trials"))
    summary = json.loads((later / "results.json").read_text())
    # The same configs measured again, slower by a tenth, and another config won; one config only
    # this second run tried.
    for trial in summary["all_results"]:
        if trial["objective_score"] is not None:
            trial["objective_score"] *= 0.9
    new_config = {"parallel": 2, "ubatch-size": 64}
    summary["all_results"].append({**summary["all_results"][-1], "experiment_id": 99, "baseline": False,
                                   "status": "completed", "parameters": new_config, "objective_score": 123.0})
    other = next(t for t in summary["all_results"]
                 if not t["baseline"] and t["parameters"] != summary["best_result"]["parameters"])
    summary["best_result"] = {**summary["best_result"], "parameters": other["parameters"]}
    (later / "results.json").write_text(json.dumps(summary))
    completed = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "report", str(results_dir), str(later)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    ratios = [float(line.split()[-1]) for line in lines[2:] if line.startswith(("{", "engine defaults"))]
    # A config the search tried twice is one line; one cut short (its low-load stages only) is not compared.
    configs = {json.dumps(t["parameters"], sort_keys=True) for t in summary["all_results"]
               if t["objective_score"] is not None and t["status"] == "completed" and t["parameters"] != new_config}
    assert len(ratios) == len(configs) >= 2  # the engine defaults and the winner at least (ASHA may cut the rest)
    assert all(abs(r - 0.9) < 1e-3 for r in ratios)
    assert "Winner changed" in completed.stdout
    only = lines[lines.index("measured only in B (1 config):") + 1]
    assert only.split() == [*json.dumps(new_config, sort_keys=True).split(), "123.0"]  # 4 significant digits
    changed = [k for k in other["parameters"] if other["parameters"][k] != json.loads(
        (results_dir / "results.json").read_text())["best_result"]["parameters"].get(k)]
    assert f"differs in {', '.join(sorted(changed))}" in completed.stdout


def test_the_report_of_a_run_still_going_says_so(run, tmp_path):
    _, results_dir, _ = run
    going = tmp_path / "going"
    shutil.copytree(results_dir, going, ignore=shutil.ignore_patterns("tune", "trials", "plots", "index.html"))
    summary = json.loads((going / "results.json").read_text())
    summary |= {"in_progress": True, "best_result": None, "all_results": summary["all_results"][:2]}
    (going / "results.json").write_text(json.dumps(summary))
    started = time.monotonic()
    completed = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "report", str(going)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    page = (going / "index.html").read_text()
    assert "still going" in page and "No winner" in page and time.monotonic() - started < 60


def test_each_trial_after_the_first_starts_in_a_worker_made_ready_while_the_one_before_ran(run):
    """A trial's actor is a new process (trainables/trial.py); Ray starting it and importing the
    trial's module once the trial before has ended cost ~1.1 s per trial. Each trial has one made
    ready for the next as it starts (trainables/next_worker.py): the next trial's process had the
    trial's module before the trial before it ended."""
    _, results_dir, _ = run
    marks = sorted((json.loads(path.read_text()) for path in results_dir.glob("trials/*/timeline.json")),
                   key=lambda marks: marks["trial_start"])
    assert len(marks) >= 4  # the baseline and three searched trials, one at a time, then the re-measured runs
    for before, after in zip(marks, marks[1:]):
        assert after["process_start"] <= after["trial_module_imported"] < before["trial_end"] < after["trial_start"]
