"""How the winner is chosen: the finalists (the best configs and always the baseline) are
re-measured, and only those re-measurements decide the winner, the gain over the baseline and the
ranking shown; a failed or infeasible re-measurement counts against its config; the spread is
reported, and so is whether the top two are within noise of each other."""

import csv
import io
import random

import pytest

from pyarrow.fs import LocalFileSystem

from llm_autotuner.cluster.storage import Storage
from llm_autotuner.objective import INFEASIBLE_SCORE
from llm_autotuner.task import parse_task
from llm_autotuner.trainables.trial import Resolved
from llm_autotuner.tuner.results import TrialRecord, best_json, finalists, p_text, summarize, table, trials_csv

RESOLVED = Resolved("llama-server", "/models/m.gguf", "m", "/tok", Storage(LocalFileSystem(), "/tmp/t", "/tmp/t"), "run")
BASELINE = {"parallel": None}


def task(**search):
    return parse_task({"name": "t", "model": {"path": "/models/m.gguf"}, "engine": {"name": "llama.cpp"},
                       "search_space": {"parallel": [1, 2, 4, 8]}, "benchmark": {"concurrency": [1, 4]},
                       "objective": {"metric": "output_throughput"},
                       "search": {"confirm_top_k": 2, "confirm_repeats": 2} | search})


def completed(number: int, parameters: dict, value: float) -> TrialRecord:
    """A trial (of the search, or a confirmation run) that measured `value` over both stages."""
    reports = [{"stage": stage, "score": value, "objective": value, "violation": None, "error": None,
                "slos_met": {}, "metrics": {"concurrency": concurrency, "output_throughput": value},
                "outcome": "completed" if stage == 2 else None}
               for stage, concurrency in [(1, 1), (2, 4)]]
    return TrialRecord(f"id{number}", parameters, parameters == BASELINE, reports, experiment_id=number)


def ended_badly(number: int, parameters: dict, outcome: str) -> TrialRecord:
    """A confirmation run that failed (the engine crashed) or broke a hard SLO."""
    report = {"stage": 1, "score": INFEASIBLE_SCORE, "objective": None, "slos_met": {}, "outcome": outcome,
              "error": "DeploymentError: engine exited with code -9" if outcome == "failed" else None,
              "violation": "ttft_p90 3 s > 1 s at concurrency 4" if outcome == "infeasible" else None}
    return TrialRecord(f"id{number}", parameters, parameters == BASELINE, [report], experiment_id=number)


def interrupted(number: int, parameters: dict) -> TrialRecord:
    """A confirmation run Ctrl-C cut after its first stage: neither for nor against its config."""
    run = completed(number, parameters, 500.0)
    run.reports, run.ended = run.reports[:1], False
    return run


def search() -> list[TrialRecord]:
    """The search: the baseline, a lucky config (its one run was high), a steady one, a weak one."""
    return [completed(1, BASELINE, 90.0), completed(2, {"parallel": 1}, 130.0),
            completed(3, {"parallel": 2}, 110.0), completed(4, {"parallel": 4}, 100.0)]


def confirmation_runs(values: dict[int, list], start: int = 10) -> list[TrialRecord]:
    """Runs in turns, as the driver makes them: the n-th value of every finalist, then the next."""
    parameters = {1: BASELINE, 2: {"parallel": 1}, 3: {"parallel": 2}, 4: {"parallel": 4}}
    runs = []
    for turn in range(max(len(v) for v in values.values())):
        for experiment, measured in values.items():
            if turn < len(measured):
                number, value = start + len(runs), measured[turn]
                if isinstance(value, str):
                    run = interrupted(number, parameters[experiment]) if value == "interrupted" else \
                        ended_badly(number, parameters[experiment], value)
                else:
                    run = completed(number, parameters[experiment], value)
                runs.append(run)
    return runs


def test_the_finalists_are_the_best_configs_and_always_the_baseline():
    records = search()
    assert [r.experiment_id for r in finalists(task(), records)] == [2, 3, 1]  # the baseline ranked last
    records[0] = completed(1, BASELINE, 140.0)
    # Its run among the best, the baseline takes no tuned config's place: the 2 best tuned configs too.
    assert [r.experiment_id for r in finalists(task(), records)] == [1, 2, 3]
    assert finalists(task(confirm_repeats=0), records) == []
    assert finalists(task(confirm_top_k=0), records) == []


def test_the_winner_and_the_gain_come_from_the_re_measurements_only():
    runs = confirmation_runs({2: [100.0, 102.0], 3: [108.0, 109.0], 1: [95.0, 97.0]})
    summary = summarize(task(), RESOLVED, search(), "unused", runs)
    best = summary["best_result"]
    # The lucky config's search run (130) is left out: with it, its mean (110.7) would beat the steady one's.
    assert best["experiment_id"] == 3
    assert best["objective_score"] == pytest.approx(108.5)
    assert best["runs"] == [108.0, 109.0] and best["search_objective"] == 110.0
    # The sample standard deviation: the population one (0.5) understates the noise two runs show.
    assert best["spread"] == {"min": 108.0, "max": 109.0, "stdev": pytest.approx(0.7071, abs=1e-4)}
    # The baseline was re-measured alike, and the gain compares the two means.
    assert summary["baseline"]["objective_score"] == pytest.approx(96.0)
    assert summary["gain_over_baseline"] == pytest.approx(108.5 / 96.0 - 1)
    assert summary["selection"]["chosen_on"] == "confirmation"
    ranked = summary["confirmation"]
    assert [(c["rank"], c["experiment_id"], c["mean"]) for c in ranked] == [(1, 3, 108.5), (2, 2, 101.0),
                                                                            (3, 1, 96.0)]


@pytest.mark.parametrize("outcome", ["failed", "infeasible"])
def test_a_failed_or_infeasible_re_measurement_disqualifies_its_config(outcome):
    # The lucky config's one good re-measurement (120) would win; its other one crashed or broke an SLO.
    runs = confirmation_runs({2: [120.0, outcome], 3: [108.0, 109.0], 1: [95.0, 97.0]})
    summary = summarize(task(), RESOLVED, search(), "unused", runs)
    assert summary["best_result"]["experiment_id"] == 3
    last = summary["confirmation"][-1]
    assert (last["experiment_id"], last["qualified"], last["failed_runs"], last["runs"]) == (2, False, 1, [120.0])


def test_a_re_measurement_the_run_cut_short_is_not_counted():
    runs = confirmation_runs({2: [100.0, 102.0], 3: [108.0, 109.0, "interrupted"], 1: [95.0, 97.0]})
    summary = summarize(task(), RESOLVED, search(), "unused", runs)
    best = summary["best_result"]
    assert (best["experiment_id"], best["runs"], best["failed_runs"]) == (3, [108.0, 109.0], 0)


def test_no_winner_when_every_finalist_failed_a_re_measurement():
    runs = confirmation_runs({2: [100.0, "failed"], 3: ["infeasible", 109.0], 1: ["failed", 97.0]})
    summary = summarize(task(), RESOLVED, search(), "unused", runs)
    assert summary["best_result"] is None and summary["gain_over_baseline"] is None
    assert "every finalist failed or broke a hard SLO" in summary["selection"]["why"]
    assert summary["selection"]["why"] in table(summary)


def test_the_table_ranks_the_finalists_by_the_number_that_chose_the_winner():
    runs = confirmation_runs({2: [100.0, 102.0], 3: [108.0, 109.0], 1: [95.0, 97.0]})
    text = table(summarize(task(), RESOLVED, search(), "unused", runs))
    ranking = text[text.index("Re-measured"):text.index("Best:")].splitlines()[1:4]
    assert [line.split()[:3] for line in ranking] == [["1.", "experiment", "3"], ["2.", "experiment", "2"],
                                                      ["3.", "experiment", "1"]]
    assert "108.5" in ranking[0] and "Best: experiment 3  output_throughput = 108.5" in text
    assert "+13.0% vs. engine defaults 96" in text


def test_trials_csv_names_the_winner_by_its_re_measurements_not_its_search_run():
    """The search's own run ranks 2 first (search() gives it the highest); the re-measurements
    choose 3. A sort of trials.csv by confirmation_rank finds 3, as best.json does."""
    runs = confirmation_runs({2: [100.0, 102.0], 3: [108.0, 109.0], 1: [95.0, 97.0]})
    summary = summarize(task(), RESOLVED, search(), "unused", runs)
    rows = {row["experiment_id"]: row for row in csv.DictReader(io.StringIO(trials_csv(summary)))}
    assert {key: row["confirmation_rank"] for key, row in rows.items() if row["confirmation_rank"]} == \
        {"3": "1", "2": "2", "1": "3"}
    assert rows["3"]["confirmation_mean"] == "108.5" and rows["3"]["confirmation_runs"] == "108.0 109.0"
    assert summary["best_result"]["experiment_id"] == 3


def test_best_json_gives_the_metrics_of_the_re_measurements_the_winner_was_chosen_on():
    """The objective's value is the re-measurements' mean (108.5); so is best.json's metric of it,
    not the search run's 110; the search run's numbers are kept beside them, named."""
    runs = confirmation_runs({2: [100.0, 102.0], 3: [108.0, 109.0], 1: [95.0, 97.0]})
    best = best_json(summarize(task(), RESOLVED, search(), "unused", runs))
    assert best["objective"]["value"] == best["metrics"]["output_throughput"] == 108.5
    assert best["metrics_in_search"]["output_throughput"] == 110.0
    assert best["metrics_are"].startswith("means over the winner's 2 re-measurements, each over its stages")


@pytest.mark.parametrize("lucky_runs, within_noise, says", [
    ([100.0, 108.5], True, "Experiments 3 and 2 are within noise of each other"),
    ([100.0, 102.0], False, "Experiments 3 and 2 are apart by more than the noise"),
])
def test_the_results_say_whether_the_top_two_are_within_noise(lucky_runs, within_noise, says):
    runs = confirmation_runs({2: lucky_runs, 3: [108.0, 109.0], 1: [95.0, 97.0]})
    summary = summarize(task(), RESOLVED, search(), "unused", runs)
    selection = summary["selection"]
    assert selection["within_noise"] is within_noise
    assert selection["noise"].startswith(says)
    assert selection["noise"] in table(summary)


@pytest.mark.parametrize("baseline_runs, within_noise", [([95.0, 108.2], True), ([95.0, 97.0], False)])
def test_the_results_say_whether_the_gain_over_the_baseline_is_within_noise(baseline_runs, within_noise):
    runs = confirmation_runs({2: [100.0, 102.0], 3: [108.0, 109.0], 1: baseline_runs})
    summary = summarize(task(), RESOLVED, search(), "unused", runs)
    assert summary["best_result"]["experiment_id"] == 3 and summary["gain_over_baseline"] > 0
    assert summary["selection"]["gain_within_noise"] is within_noise
    best_line = next(line for line in table(summary).splitlines() if line.startswith("Best:"))
    assert ("within noise: t-test p = " in best_line) is within_noise
    assert (summary["selection"]["gain_p_value"] >= 0.05) is within_noise
    # Told apart, the line still says on how much evidence.
    assert within_noise or f"; t-test p = {p_text(summary['selection']['gain_p_value'])})" in best_line


def test_runs_that_do_not_overlap_are_not_called_apart_when_the_noise_can_explain_them():
    """README's sample run: two runs each whose ranges do not overlap, yet the gap between the means
    is no larger than the runs' own spread explains (old rule: "apart by more than the noise")."""
    runs = confirmation_runs({2: [80.62, 88.12], 3: [76.52, 79.67], 1: [70.0, 71.0]})
    selection = summarize(task(), RESOLVED, search(), "unused", runs)["selection"]
    assert selection["within_noise"] is True and 0.2 < selection["p_value"] < 0.35
    assert selection["noise"].startswith("Experiments 2 and 3 are within noise of each other (t-test p = ")


def test_equally_good_configs_are_called_apart_about_one_time_in_twenty():
    """The verdict's false alarms: two configs with the same true throughput, each re-measured twice
    with the same noise, 2000 times. Non-overlapping ranges (the rule before) happen one time in
    three; a verdict a user can trust says "apart" near the 5% it stands for."""
    rng = random.Random(7)
    apart = 0
    for _ in range(2000):
        values = {2: [rng.gauss(100, 4) for _ in range(2)], 3: [rng.gauss(100, 4) for _ in range(2)],
                  1: [60.0, 61.0]}
        apart += summarize(task(), RESOLVED, search(), "unused", confirmation_runs(values))["selection"]["within_noise"] is False
    assert 0.03 < apart / 2000 < 0.075


def test_one_re_measurement_each_cannot_show_the_noise():
    runs = confirmation_runs({2: [100.0], 3: [108.0], 1: [95.0]})
    summary = summarize(task(confirm_repeats=1), RESOLVED, search(), "unused", runs)
    assert summary["best_result"]["experiment_id"] == 3
    assert summary["selection"]["within_noise"] is None and summary["selection"]["gain_within_noise"] is None
    assert "confirm_repeats" in summary["selection"]["noise"]


@pytest.mark.parametrize("settings, runs, why", [
    ({"confirm_repeats": 0}, None, "confirmation is off"),
    ({"confirm_top_k": 0}, None, "confirmation is off"),
    ({}, None, "no confirmation runs were made"),
    ({}, [interrupted(10, {"parallel": 1})], "no confirmation run finished"),
])
def test_without_re_measurements_the_search_runs_decide_and_the_results_say_so(settings, runs, why):
    summary = summarize(task(**settings), RESOLVED, search(), "unused", runs)
    assert summary["best_result"]["experiment_id"] == 2 and summary["best_result"]["objective_score"] == 130.0
    assert summary["gain_over_baseline"] == pytest.approx(130.0 / 90.0 - 1)
    assert summary["selection"]["chosen_on"] == "search" and why in summary["selection"]["why"]
    assert summary["confirmation"] == [] and summary["selection"]["within_noise"] is None
