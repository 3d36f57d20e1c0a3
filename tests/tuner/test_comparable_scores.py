"""What the searcher and patience are told about a trial the scheduler stopped early: a value below
every trial that went further, not the mean of its low-load stages (which, for a latency, beats any
full-length mean). Results are fed as Ray Tune hands them on, to the searcher chain the driver
builds (build_searcher) around a real, recording Searcher."""

import pickle
from types import SimpleNamespace

import pytest
from ray.tune.search import Searcher
from ray.tune.search.search_generator import SearchGenerator
from ray.tune.utils import flatten_dict

from llm_autotuner.objective import INFEASIBLE_SCORE, score_stages, worst_value
from llm_autotuner.task import parse_task
from llm_autotuner.tuner.search import NoImprovementStopper, build_searcher

CONCURRENCY = [1, 4, 8]
METRICS = ["ttft_p90", "e2e_p90"]  # both minimised


class Recording(Searcher):
    """Hands out `parallel` 1, 2, 3, ... and keeps what it is told when each trial completes."""

    def __init__(self):
        super().__init__()
        self.told: dict[str, dict] = {}
        self.suggested = 0

    def set_search_properties(self, metric, mode, config, **spec):
        self._metric, self._mode = metric, mode
        return True

    def suggest(self, trial_id):
        self.suggested += 1
        return {"parallel": self.suggested}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told[trial_id] = result

    def save(self, checkpoint_path):
        with open(checkpoint_path, "wb") as file:
            pickle.dump((self.told, self.suggested), file)

    def restore(self, checkpoint_path):
        with open(checkpoint_path, "rb") as file:
            self.told, self.suggested = pickle.load(file)


def latency_task(algorithm="tests.tuner.test_comparable_scores:Recording"):
    return parse_task({"name": "t", "model": {"path": "/models/m.gguf"}, "engine": {"name": "llama.cpp"},
                       "search_space": {"parallel": [1, 2, 3, 4]}, "benchmark": {"concurrency": CONCURRENCY},
                       "objective": {"metric": METRICS[0], "secondary": METRICS[1:]},
                       "search": {"algorithm": algorithm}})


def reports(ttfts: list[float], completed: bool) -> list[dict]:
    """A trial's reports, as trainables/trial.py makes them and Ray flattens them for the searcher:
    one per stage, latencies rising with the load; e2e latency ten times the TTFT."""
    stages, out = [], []
    for index, ttft in enumerate(ttfts, 1):
        stages.append({"concurrency": CONCURRENCY[index - 1], "ttft_p90": ttft, "e2e_p90": 10 * ttft})
        score = score_stages(stages, METRICS[0], [])
        last = completed and index == len(ttfts)
        out.append(flatten_dict({"stage": index, "score": score.score, "objective": score.value,
                                 "objectives": {m: sum(s[m] for s in stages) / len(stages) for m in METRICS},
                                 "error": None, "outcome": "completed" if last else None, "metrics": stages[-1]}))
    return out


def failure() -> dict:
    return flatten_dict({"stage": 0, "score": INFEASIBLE_SCORE, "objective": None, "error": "DeploymentError: x",
                         "objectives": {m: worst_value(m) for m in METRICS}, "outcome": "failed"})


def run_trial(searcher: Searcher, trial_id: str, results: list[dict]) -> dict:
    """What Ray does: every result but the last through on_trial_result, the last (the one that
    ends the trial, whether it completed or the scheduler stopped it) through on_trial_complete."""
    for result in results[:-1]:
        searcher.on_trial_result(trial_id, result)
    last = dict(results[-1])
    searcher.on_trial_complete(trial_id, result=last)
    assert last == results[-1]  # what the trial reported (its results) is left as it was
    return last


def started(task, *trial_ids):
    searcher = build_searcher(task, max_concurrent=4)
    searcher.set_search_properties("score", "max", {})
    for trial_id in trial_ids:
        searcher.suggest(trial_id)
    innermost = searcher
    while hasattr(innermost, "searcher"):  # the wrappers: baseline first, concurrency limit, ...
        innermost = innermost.searcher
    return searcher, innermost


def test_a_trial_stopped_at_low_load_is_told_worse_than_every_trial_that_completed():
    searcher, recording = started(latency_task(), "base", "full", "cut")
    run_trial(searcher, "base", reports([0.30, 0.60, 0.90], completed=True))  # the baseline: never stopped
    searcher.on_trial_result("full", reports([0.25], completed=False)[0])
    # Slower than both at stage 1, so the scheduler stopped it there; its stage-1 TTFT (0.35 s at
    # concurrency 1) is still far below any mean that includes concurrency 4 and 8.
    cut = run_trial(searcher, "cut", reports([0.35], completed=False))
    assert cut["score"] == -0.35
    run_trial(searcher, "full", reports([0.25, 0.50, 0.75], completed=True))
    told = recording.told
    assert told["full"]["score"] == -0.5  # a trial that completed is told what it measured
    assert told["cut"]["score"] < told["full"]["score"]
    assert told["cut"]["score"] < -0.6  # below the baseline, the one trial that had gone further then
    # Each objective too, for a multi-objective searcher (minimised: higher is worse).
    for metric, baseline in [("ttft_p90", 0.6), ("e2e_p90", 6.0)]:
        assert told["cut"][f"objectives/{metric}"] > baseline > told["full"][f"objectives/{metric}"]
    assert "base" not in told  # the searcher never hears of the baseline


def test_trials_stopped_early_rank_by_their_last_stage_and_above_failures():
    searcher, recording = started(latency_task(), "base", "cut-at-2", "cut-slow", "cut-fast", "broken")
    run_trial(searcher, "base", reports([0.30, 0.60, 0.90], completed=True))
    # Cut after stage 2 (by the run's end, say), with the worst mean yet: still above the trials cut at stage 1.
    run_trial(searcher, "cut-at-2", reports([0.28, 1.2], completed=False))
    run_trial(searcher, "cut-slow", reports([0.5], completed=False))
    run_trial(searcher, "cut-fast", reports([0.4], completed=False))
    run_trial(searcher, "broken", [failure()])
    told = {trial_id: result["score"] for trial_id, result in recording.told.items()}
    assert INFEASIBLE_SCORE == told["broken"] < told["cut-slow"] < told["cut-fast"] < told["cut-at-2"] < -0.6


def test_patience_counts_a_trial_stopped_early_as_no_improvement():
    stopper = NoImprovementStopper(patience=1)
    feed(stopper, "full", reports([0.25, 0.50, 0.75], completed=True))
    feed(stopper, "cut", reports([0.35], completed=False))
    assert stopper.stop_all()


def test_patience_is_not_fooled_by_a_trial_stopped_before_any_trial_completed():
    stopper = NoImprovementStopper(patience=1)
    feed(stopper, "cut", reports([0.35], completed=False))
    feed(stopper, "full", reports([0.25, 0.50, 0.75], completed=True))  # the first full-length measurement: a new best
    assert not stopper.stop_all()


def feed(stopper: NoImprovementStopper, trial_id: str, results: list[dict]) -> None:
    """As Ray calls a callback: each result, then the end (with the last result on the trial)."""
    trial = SimpleNamespace(trial_id=trial_id, config={"parallel": 1}, last_result=None)
    for result in results:
        trial.last_result = result
        stopper.on_trial_result(0, [], trial, result)
    stopper.on_trial_complete(0, [], trial)


def test_what_it_learned_survives_a_resume(tmp_path):
    searcher, _ = started(latency_task(), "base")
    run_trial(searcher, "base", reports([0.30, 0.60, 0.90], completed=True))
    SearchGenerator(searcher).save_to_dir(str(tmp_path), session_str="s")
    restored, recording = started(latency_task())
    SearchGenerator(restored).restore_from_dir(str(tmp_path))
    restored.suggest("cut")
    run_trial(restored, "cut", reports([0.35], completed=False))
    # The baseline's mean (0.6 s), less how far it trailed the baseline at stage 1 (0.05 s).
    assert recording.told["cut"]["score"] == pytest.approx(-0.65)
