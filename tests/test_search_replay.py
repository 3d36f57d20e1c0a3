"""The search replay (benchmarks/search_replay.py) drives the tuner's own searcher, scheduler and
confirmation: it must keep working as those change, and a seed must replay alike."""

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import search_replay  # noqa: E402

TABLE = json.loads((BENCHMARKS / "data" / "grid-2026-12-04.json").read_text())


def test_a_replayed_search_runs_its_budget_and_a_seed_replays_alike():
    setting = search_replay.SETTINGS["hyperopt"]
    first = search_replay.replay_one(TABLE, setting, seed=3, noise=0.035)
    assert first == search_replay.replay_one(TABLE, setting, seed=3, noise=0.035)
    assert first["trials"] == 9  # 8 samples and the baseline
    assert 0.3 < first["reached"] <= 1.0
    assert 0.1 < first["time"] < 0.5  # 9 trials, some stopped early, and 8 confirmation runs of 48


def test_without_noise_the_whole_grid_finds_the_grid_s_best_at_the_grid_s_cost():
    # 48 samples of a 48-config space without noise: the grid itself, so the answer is known.
    setting = {"algorithm": "grid", "scheduler": "none", "confirm_repeats": 0}
    result = search_replay.replay_one(TABLE, setting, seed=1, noise=0.0)
    assert result["reached"] == 1.0
    assert result["trials"] == 49
    # Its cost is the grid's, plus the baseline trial.
    assert 1.0 < result["time"] < 1.05


def test_another_recorded_metric_is_judged_in_its_own_direction():
    # Throughput is maximised: the whole grid without noise must pick the config of the highest.
    setting = {"algorithm": "grid", "scheduler": "none", "confirm_repeats": 0}
    result = search_replay.replay_one(TABLE, setting, seed=1, noise=0.0, metric="output_throughput")
    assert result["reached"] == 1.0
    highest = max((c for c in TABLE["configs"] if c["parameters"]),
                  key=lambda c: sum(s["output_throughput"] for s in c["stages"]))
    assert json.loads(result["winner"]) == highest["parameters"]
