"""The live panel's overall line: the best so far and its gain over the engine defaults, in the
same sense as results.json (positive = better), whichever way the objective goes."""

import io
from types import SimpleNamespace

from rich.console import Console

from llm_autotuner.outcome import BASELINE_KEY
from llm_autotuner.tuner.progress import LiveProgress


def finished(panel: LiveProgress, number: int, value: float, baseline: bool = False) -> None:
    config = {BASELINE_KEY: True} if baseline else {"threads": number}
    trial = SimpleNamespace(trial_id=f"t{number}", experiment_tag=f"{number}_threads={number}", config=config,
                            last_result={"objective": value, "stage": 2, "error": None, "violation": None})
    panel.on_trial_start(0, [], trial)
    panel.on_trial_complete(0, [], trial)


def overall_line(panel: LiveProgress) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(panel)
    return out.getvalue().strip().splitlines()[-1]


def test_a_lower_latency_than_the_baseline_is_a_positive_gain(capsys):
    panel = LiveProgress("e2e_p90", num_stages=2, budget=3, maximize=False)
    finished(panel, 1, 1.0, baseline=True)
    finished(panel, 2, 0.8)
    assert "best e2e_p90 0.8000 (trial 2), +20.0% vs engine defaults" in overall_line(panel)


def test_a_higher_throughput_than_the_baseline_is_a_positive_gain(capsys):
    panel = LiveProgress("output_throughput", num_stages=2, budget=3, maximize=True)
    finished(panel, 1, 100.0, baseline=True)
    finished(panel, 2, 125.0)
    assert "best output_throughput 125.0 (trial 2), +25.0% vs engine defaults" in overall_line(panel)


def test_after_resume_the_trials_the_earlier_session_finished_count_as_done():
    panel = LiveProgress("output_throughput", num_stages=2, budget=4, maximize=True)
    earlier = [SimpleNamespace(trial_id=f"t{n}", experiment_tag=f"{n}_threads={n}", status="TERMINATED",
                               config={BASELINE_KEY: True} if n == 1 else {"threads": n},
                               last_result={"objective": value, "stage": 2, "error": None, "violation": None})
               for n, value in ((1, 100.0), (2, 130.0))]
    restarted = SimpleNamespace(trial_id="t3", status="PENDING", config={"threads": 3}, last_result={})
    panel.on_step_begin(0, earlier + [restarted])
    panel.on_step_begin(1, earlier + [restarted])  # counted once
    line = overall_line(panel)
    assert line.startswith("2/4 trials done") and "best output_throughput 130.0 (trial 2), +30.0%" in line, line
    assert "left" not in line  # no pace yet: this session has finished nothing
    finished(panel, 3, 120.0)
    assert overall_line(panel).startswith("3/4 trials done") and "left" in overall_line(panel)


def test_a_trial_the_runs_stop_cut_is_not_said_to_be_stopped_by_the_scheduler(capsys):
    from llm_autotuner.tuner.progress import ProgressPrinter

    printer = ProgressPrinter("output_throughput", num_stages=3)
    trial = SimpleNamespace(trial_id="t2", experiment_tag="2_threads=2", config={"threads": 2},
                            last_result={"stage": 1, "outcome": "interrupted", "error": None, "violation": None})
    printer.on_trial_start(0, [], trial)
    stage_1 = {"stage": 1, "metrics": {"concurrency": 2, "output_throughput": 50.0}, "error": None, "violation": None}
    printer.on_trial_result(0, [], trial, stage_1)
    printer.on_trial_result(0, [], trial, trial.last_result)  # the stop's report during stage 2: nothing measured
    printer.on_trial_complete(0, [], trial)
    out = capsys.readouterr().out
    assert out.count("stage 1/3") == 1 and "nan" not in out, out
    assert "trial 2: stopped by the run's end after stage 1" in out and "scheduler" not in out, out


def test_a_stage_whose_time_ran_out_before_its_requests_says_so(capsys):
    """A stage that made 12 of its 16 requests before max_minutes_per_stage (a stalled machine, or
    a config that slow) measured fewer requests than the others: its line says so."""
    from llm_autotuner.tuner.progress import ProgressPrinter

    printer = ProgressPrinter("output_throughput", num_stages=3, requests_per_stage=16)
    trial = SimpleNamespace(trial_id="t1", experiment_tag="1_threads=2", config={"threads": 2}, last_result={})
    for made in (16, 12):
        printer.on_trial_result(0, [], trial, {"stage": 1, "error": None, "violation": None, "metrics": {
            "concurrency": 1, "output_throughput": 12.93, "num_requests": made}})
    short, full = [line for line in capsys.readouterr().out.splitlines() if "stage 1/3" in line][::-1]
    assert short.endswith("output_throughput 12.93  (only 12 of 16 requests within the stage's time)"), short
    assert full.endswith("output_throughput 12.93"), full
