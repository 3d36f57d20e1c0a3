"""The task's search space as a Ray Tune param space.

One rule for every searcher (validated in llm_autotuner/task.py): a list is its choices; an int
range is min..max inclusive; a stepped range is min, min + step, ..., max; a float range without
a step is continuous between min and max.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from llm_autotuner.task import FloatRange, IntRange


def to_ray(search_space: dict[str, Any]) -> dict[str, Any]:
    return {name: _domain(spec) for name, spec in search_space.items()}


def _domain(spec: Any):
    if isinstance(spec, list):
        return tune.choice(list(spec))
    if isinstance(spec, IntRange) and (spec.step or 1) == 1:
        # Every integer: randint/lograndint exclude the upper bound, and so do their HyperOpt and
        # Optuna forms. Kept as a range (not a choice) so the model-based searchers see it ordered.
        return (tune.lograndint if spec.log else tune.randint)(spec.min, spec.max + 1)
    if isinstance(spec, FloatRange) and spec.step is None:
        return (tune.loguniform if spec.log else tune.uniform)(spec.min, spec.max)
    if isinstance(spec, (IntRange, FloatRange)):
        # Not Ray's q-domains: qrandint takes multiples of step (not min + k * step), HyperOpt and
        # Optuna convert them with bounds of their own, and quniform refuses bounds that are not
        # multiples of step. A choice is the same finite set in every searcher (unordered to
        # HyperOpt's and Optuna's models: the price of one meaning).
        return tune.choice(spec.values())
    raise TypeError(f"unsupported search-space entry {spec!r}")


def sample(search_space: dict[str, Any]) -> dict[str, Any]:
    """One random config from the space (for dry runs and tests)."""
    return {name: domain.sample() for name, domain in to_ray(search_space).items()}
