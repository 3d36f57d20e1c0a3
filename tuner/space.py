"""The task's search space as a Ray Tune param space."""

from __future__ import annotations

from typing import Any

from ray import tune

from llm_autotuner.task import FloatRange, IntRange


def to_ray(search_space: dict[str, Any]) -> dict[str, Any]:
    return {name: _domain(spec) for name, spec in search_space.items()}


def _domain(spec: Any):
    if isinstance(spec, list):
        return tune.choice(list(spec))
    if isinstance(spec, IntRange):
        # Ray's randint/lograndint exclude the upper bound; qrandint/qlograndint include it.
        if spec.step:
            return (tune.qlograndint if spec.log else tune.qrandint)(spec.min, spec.max, spec.step)
        return (tune.lograndint if spec.log else tune.randint)(spec.min, spec.max + 1)
    if isinstance(spec, FloatRange):
        if spec.step:
            return (tune.qloguniform if spec.log else tune.quniform)(spec.min, spec.max, spec.step)
        return (tune.loguniform if spec.log else tune.uniform)(spec.min, spec.max)
    raise TypeError(f"unsupported search-space entry {spec!r}")


def sample(search_space: dict[str, Any]) -> dict[str, Any]:
    """One random config from the space (for dry runs and tests)."""
    return {name: domain.sample() for name, domain in to_ray(search_space).items()}
