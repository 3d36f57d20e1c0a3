"""End to end on the real CPU engine: the finalists, the engine defaults among them, are re-measured
in turns after the search, and those re-measurements alone choose the winner, the gain and the
ranking printed. Small: the grid over two configs and the baseline, one stage, two re-measurements
each; one thread per engine (see test_e2e_local.py)."""

import json
import subprocess
import sys
import uuid
from statistics import fmean

import pytest
import yaml

from tests.conftest import engine_processes
from llm_autotuner.metrics import figure

# The re-measurement in turns is also covered by tests/tuner/test_confirm_in_turns.py and the
# confirmation runs of tests/test_e2e_local.py.
pytestmark = [pytest.mark.e2e, pytest.mark.extended]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-confirm")
    served = f"confirm-{uuid.uuid4().hex[:8]}"
    task = {
        "name": "e2e-confirm",
        "model": {"path": "builtin:smollm2", "name": served},
        "engine": {"name": "llama.cpp", "args": {"ctx-size": 1024, "threads": 1}},
        "search_space": {"parallel": [1, 2]},
        "benchmark": {"traffic_scenario": "D(32,16)", "concurrency": [2], "max_requests_per_stage": 4},
        "search": {"algorithm": "grid", "scheduler": "none", "confirm_top_k": 3, "confirm_repeats": 2},
        "results_dir": str(root / "results"),
    }
    path = root / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    completed = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path), "--no-dashboard"],
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results_dir = root / "results" / "e2e-confirm"
    return completed.stdout, results_dir, json.loads((results_dir / "results.json").read_text()), served


def confirmation_order(results_dir) -> list:
    """Each confirmation run's config (its `parallel`; None for the engine defaults), by start time."""
    started = []
    for params in (results_dir / "confirm").glob("*/params.json"):
        trial_id = json.loads(params.with_name("result.json").read_text().splitlines()[0])["trial_id"]
        timeline = json.loads((results_dir / "trials" / trial_id / "timeline.json").read_text())
        started.append((timeline["trial_start"], json.loads(params.read_text())["parallel"]))
    return [parallel for _, parallel in sorted(started)]


def test_the_finalists_and_the_baseline_are_re_measured_in_turns(run):
    _, results_dir, _, _ = run
    order = confirmation_order(results_dir)
    assert len(order) == 6 and order[:3] == order[3:] and set(order) == {1, 2, None}, order


def test_the_re_measurements_alone_choose_the_winner_and_the_gain(run):
    _, _, results, _ = run
    assert results["selection"]["chosen_on"] == "confirmation"
    ranked = results["confirmation"]
    assert [len(c["runs"]) for c in ranked] == [2, 2, 2] and all(c["qualified"] for c in ranked)
    best, baseline = results["best_result"], results["baseline"]
    assert best["experiment_id"] == ranked[0]["experiment_id"]
    assert best["objective_score"] == pytest.approx(fmean(best["runs"])) == pytest.approx(ranked[0]["mean"])
    assert baseline["objective_score"] == pytest.approx(fmean(baseline["runs"]))
    assert results["gain_over_baseline"] == pytest.approx(best["objective_score"] / baseline["objective_score"] - 1)
    assert isinstance(results["selection"]["within_noise"], bool)


def test_the_printed_ranking_is_the_one_the_winner_came_from(run):
    output, _, results, served = run
    ranking = output[output.index("Re-measured after the search"):output.index("Best:")]
    first = results["confirmation"][0]
    assert f"1. experiment {first['experiment_id']} " in ranking and figure(first['mean']) in ranking
    assert results["selection"]["noise"] in output
    assert f"Best: experiment {first['experiment_id']}  output_throughput = {figure(first['mean'])}" in output
    assert engine_processes(served) == set()
