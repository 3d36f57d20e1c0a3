"""Objective and SLO scoring: the metrics of the stages so far plus the SLOs give one score.

Every score handed to Ray Tune is "higher is better" (latencies are negated), so the scheduler
and searcher always run in `max` mode and a broken SLO can be given the worst score.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean

THROUGHPUT_METRICS = ("output_throughput", "total_throughput", "requests_per_second")
LATENCY_KINDS = ("ttft", "tpot", "e2e")
LATENCY_STATS = ("mean", "p50", "p90", "p99")
LATENCY_METRICS = tuple(f"{kind}_{stat}" for kind in LATENCY_KINDS for stat in LATENCY_STATS)
OBJECTIVE_METRICS = THROUGHPUT_METRICS + LATENCY_METRICS
# An SLO is an upper limit on a latency statistic or on the error rate.
SLO_METRICS = LATENCY_METRICS + ("error_rate",)

# Worst score: finite, because searchers such as HyperOpt cannot learn from infinities.
INFEASIBLE_SCORE = -1e9

UNITS = {"output_throughput": "tok/s", "total_throughput": "tok/s", "requests_per_second": "req/s",
         "error_rate": ""} | {name: "s" for name in LATENCY_METRICS}


def maximize(metric: str) -> bool:
    return metric in THROUGHPUT_METRICS


@dataclass(frozen=True)
class Score:
    """The objective over the stages measured so far."""

    value: float | None  # the objective in its own units (mean over stages); None if infeasible
    score: float  # what Ray Tune sees: higher is better
    violation: str | None  # the first SLO broken, e.g. "ttft_p90 1.42 s > 1.00 s"

    @property
    def feasible(self) -> bool:
        return self.violation is None


def slo_violation(stage: dict, slos: dict[str, float]) -> str | None:
    """Name the first SLO a stage breaks, or None."""
    for metric, limit in slos.items():
        observed = stage.get(metric)
        if observed is not None and observed > limit:
            unit = UNITS[metric]
            return f"{metric} {observed:.3g}{' ' + unit if unit else ''} > {limit:g}{' ' + unit if unit else ''} at concurrency {stage.get('concurrency')}"
    return None


def score_stages(stages: list[dict], metric: str, slos: dict[str, float]) -> Score:
    """Mean of the objective over the stages so far, or the worst score if any stage broke an SLO.

    The mean keeps scores of trials at the same stage comparable, which is what ASHA compares.
    """
    for stage in stages:
        violation = slo_violation(stage, slos)
        if violation:
            return Score(value=None, score=INFEASIBLE_SCORE, violation=violation)
    value = fmean(stage[metric] for stage in stages)
    return Score(value=value, score=value if maximize(metric) else -value, violation=None)


def gain(best: float, baseline: float, metric: str) -> float | None:
    """Relative improvement of best over baseline, positive when best is better."""
    if not baseline:
        return None
    ratio = best / baseline - 1.0
    return ratio if maximize(metric) else -ratio
