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
    assert "best e2e_p90 0.8 (trial 2), +20.0% vs engine defaults" in overall_line(panel)


def test_a_higher_throughput_than_the_baseline_is_a_positive_gain(capsys):
    panel = LiveProgress("output_throughput", num_stages=2, budget=3, maximize=True)
    finished(panel, 1, 100.0, baseline=True)
    finished(panel, 2, 125.0)
    assert "best output_throughput 125 (trial 2), +25.0% vs engine defaults" in overall_line(panel)
