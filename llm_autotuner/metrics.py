"""Every metric a benchmark stage reports that a task may name, in one place: its unit, whether
higher is better, and which per-request field of genai-bench it summarises. The task model (which
objectives and SLOs exist), the scoring, goodput, the stage parser and the report all read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    maximize: bool
    request_field: str | None = None  # the per-request field a latency statistic summarises
    objective: bool = True  # may be the objective; an SLO is an upper limit, so only on a minimised metric

    @property
    def slo(self) -> bool:
        return not self.maximize


# Latency kinds: our name -> the per-request field of genai-bench's individual_request_metrics.
LATENCY_KINDS = {"ttft": "ttft", "tpot": "tpot", "e2e": "e2e_latency"}
# Other names of a kind. itl (inter-token latency) is genai-bench's tpot: a request's time per
# output token after the first.
KIND_ALIASES = {"itl": "tpot"}
LATENCY_STATS = ("mean", "p50", "p90", "p95", "p99")

_THROUGHPUTS = [
    Metric("output_throughput", "tok/s", True),
    Metric("total_throughput", "tok/s", True),  # prompt and output tokens
    Metric("requests_per_second", "req/s", True),
    Metric("goodput", "req/s", True),  # completed requests per second that met every latency SLO
    Metric("output_throughput_per_gpu", "tok/s/GPU", True),
]
_LATENCIES = [Metric(f"{kind}_{stat}", "s", False, LATENCY_KINDS[KIND_ALIASES.get(kind, kind)])
              for kind in [*LATENCY_KINDS, *KIND_ALIASES] for stat in LATENCY_STATS]
# Fractions of a stage's requests: failed (by genai-bench's count), and answered with fewer output
# tokens than asked (a context too small per slot, a length limit), which would look like speed.
_FRACTIONS = [Metric("error_rate", "", False, objective=False), Metric("truncated_fraction", "", False, objective=False)]
METRICS: dict[str, Metric] = {m.name: m for m in [*_THROUGHPUTS, *_LATENCIES, *_FRACTIONS]}
OBJECTIVE_METRICS = tuple(name for name, m in METRICS.items() if m.objective)
SLO_METRICS = tuple(name for name, m in METRICS.items() if m.slo)


def maximize(metric: str) -> bool:
    return METRICS[metric].maximize


def counted(number: int, noun: str) -> str:
    """A count as the tool words it: "1 stage", "3 stages"."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def figure(value: float | None) -> str:
    """A measured number as the tool prints it: 4 significant digits, trailing zeros kept, so that
    71.00 stands beside 73.27 as the same precision (`.4g` printed "71", which reads as rounded);
    from 1000 up, whole units (a GPU's 12346 tok/s, not `.4g`'s 1.235e+04); "-" for none."""
    if value is None:
        return "-"
    if abs(value) >= 1000 and math.isfinite(value):
        return f"{value:.0f}"
    return f"{value:#.4g}".rstrip(".")
