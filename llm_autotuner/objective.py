"""Objective and SLO scoring: the metrics of the stages so far plus the SLOs give one score.

Every score handed to Ray Tune is "higher is better" (latencies are negated), so the scheduler
and searcher always run in `max` mode and a broken hard SLO can be given the worst score.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_autotuner.errors import BenchmarkError
from llm_autotuner.metrics import METRICS, maximize

# Worst score: finite, because searchers such as HyperOpt cannot learn from infinities.
INFEASIBLE_SCORE = -1e9

@dataclass(frozen=True)
class Limit:
    """An SLO: `metric` <= `limit`. A hard one makes a trial infeasible; a soft one scales its score."""

    metric: str
    limit: float
    hard: bool = True


@dataclass(frozen=True)
class Score:
    """The objective over the stages measured so far."""

    value: float | None  # the objective in its own units (weighted mean over stages); None if infeasible
    score: float  # what Ray Tune sees: higher is better
    violation: str | None  # the first hard SLO broken, e.g. "ttft_p90 1.42 s > 1 s at concurrency 8"
    slos_met: dict[str, bool]  # every SLO: met at every stage so far?

    @property
    def feasible(self) -> bool:
        return self.violation is None


def request_limits(limits: list[Limit]) -> dict[str, float]:
    """Per-request latency limits for goodput: the tightest limit on each latency kind."""
    per_request: dict[str, float] = {}
    for limit in limits:
        field = METRICS[limit.metric].request_field
        if field:
            per_request[field] = min(limit.limit, per_request.get(field, float("inf")))
    return per_request


def _describe(metric: str, observed: float, limit: float, concurrency) -> str:
    unit = METRICS[metric].unit
    unit = f" {unit}" if unit else ""
    return f"{metric} {observed:.3g}{unit} > {limit:g}{unit} at concurrency {concurrency}"


def score_stages(stages: list[dict], metric: str, limits: list[Limit], weights: list[float] | None = None) -> Score:
    """The weighted mean of the objective over the stages so far (so trials at the same stage
    compare fairly, which is what ASHA does), or the worst score once a hard SLO broke.

    A broken soft SLO keeps the trial feasible but multiplies a maximised objective by
    limit/observed (divides a minimised one), for each soft limit at its worst stage.
    """
    met = {limit.metric: True for limit in limits}
    penalty, violation = 1.0, None
    for limit in limits:  # every limit is checked, so slos_met is whole even when one breaks the trial
        worst = max((stage.get(limit.metric) for stage in stages if stage.get(limit.metric) is not None),
                    default=None)
        if worst is None or worst <= limit.limit:
            continue
        met[limit.metric] = False
        if limit.hard:
            stage = next(s for s in stages if s.get(limit.metric) == worst)
            violation = violation or _describe(limit.metric, worst, limit.limit, stage.get("concurrency"))
        else:
            penalty *= limit.limit / worst
    if violation:
        return Score(None, INFEASIBLE_SCORE, violation, met)
    value = weighted_mean(stages, metric, weights)
    if maximize(metric):
        return Score(value, value * penalty, None, met)
    return Score(value, -value / penalty, None, met)


# Why a stage's statistic can have no value (trainables/timed_genai_bench.py keeps genai-bench
# running through such a stage instead of its crash).
UNMEASURED = {"tpot": "genai-bench times output tokens only in answers of 2 or more tokens that did not arrive "
                      "all at once (within 1 ms), and no answered request of the stage was one"}


def weighted_mean(stages: list[dict], metric: str, weights: list[float] | None = None) -> float:
    """A metric over the stages so far: the stage weights' mean (default: equal weights)."""
    unmeasured = next((stage for stage in stages if stage.get(metric) is None), None)
    if unmeasured is not None:
        raise BenchmarkError(f"{metric} has no value at concurrency {unmeasured.get('concurrency')}: "
                             f"{UNMEASURED.get(METRICS[metric].request_field, 'no answered request measured it')}")
    weights = (weights or [1.0] * len(stages))[:len(stages)]
    return sum(w * stage[metric] for w, stage in zip(weights, stages)) / sum(weights)


def worst_value(metric: str) -> float:
    """What an infeasible or failed trial reports for an objective: finite, as for the score."""
    return INFEASIBLE_SCORE if maximize(metric) else -INFEASIBLE_SCORE


def gain(best: float, baseline: float, metric: str) -> float | None:
    """Relative improvement of best over baseline, positive when best is better."""
    if not baseline:
        return None
    ratio = best / baseline - 1.0
    return ratio if maximize(metric) else -ratio
