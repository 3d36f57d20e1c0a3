"""The report's plots, each a PNG drawn from results.json alone (so `autotuner report` can redraw
them for any run, finished or still going) with the one-sentence caption the page shows under it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from llm_autotuner.metrics import METRICS
from llm_autotuner.objective import weighted_mean
from llm_autotuner.tuner.results import pareto_front

THROUGHPUT, LATENCY = "output_throughput", "e2e_p90"  # the trade-off's axes unless the task names others
BEST, BASELINE, STOPPED, OTHER = "tab:green", "black", "tab:red", "tab:blue"


def with_unit(metric: str) -> str:
    """An axis label: the metric and its unit ("output_throughput (tok/s)")."""
    unit = METRICS[metric].unit if metric in METRICS else ""
    return f"{metric} ({unit})" if unit else metric


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path


def _measured(summary: dict) -> list[dict]:
    return [t for t in summary["all_results"] if t["stages"]]


def _best_id(summary: dict):
    return (summary.get("best_result") or {}).get("experiment_id")


def write_stage_plot(summary: dict, path: Path) -> Path | None:
    """The objective of every trial stage by stage, so the scheduler's cuts and the winner show."""
    plt = _pyplot()
    metric = summary["objective"]["metric"]
    concurrencies = [stage["concurrency"] for stage in summary["stages"]]
    trials = _measured(summary)
    if not trials:
        path.unlink(missing_ok=True)  # an earlier attempt's plot (a resumed run) would show other trials
        return None
    best_id = _best_id(summary)
    figure, axes = plt.subplots(figsize=(8, 5))
    labelled = set()
    for trial in trials:
        values = [stage[metric] for stage in trial["stages"]]
        stages = list(range(1, len(values) + 1))
        if trial["baseline"]:
            style = dict(color=BASELINE, linestyle="--", linewidth=2, label="engine defaults")
        elif trial["experiment_id"] == best_id:
            style = dict(color=BEST, linewidth=2.5, label=f"best (trial {best_id})")
        elif trial["status"] == "stopped-by-scheduler":
            style = dict(color=STOPPED, alpha=0.5, linewidth=1, label="stopped early by the scheduler")
        else:
            style = dict(color=OTHER, alpha=0.6, linewidth=1, label="other trials")
        # Each kind once in the legend (a run may have no winner: every trial cut by the budget).
        if style["label"] in labelled:
            style["label"] = "_nolegend_"
        labelled.add(style["label"])
        axes.plot(stages, values, marker="o", **style)
    axes.set_xticks(range(1, len(concurrencies) + 1),
                    [f"stage {i}\nconcurrency {c}" for i, c in enumerate(concurrencies, 1)])
    axes.set_ylabel(with_unit(metric))
    axes.set_title(f"{summary['task_name']}: {metric} per stage (red: stopped early by the scheduler)")
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    return _save(figure, path)


def tradeoff_axes(summary: dict) -> tuple[str, str]:
    """(throughput, latency) to draw: the objective if it is a throughput, and the first latency an
    SLO limits (the trade-off a user set), else output throughput against p90 end-to-end latency."""
    metric = summary["objective"]["metric"]
    throughput = metric if METRICS[metric].unit.startswith("tok/s") else THROUGHPUT
    latency = next((s["metric"] for s in summary["slos"] if METRICS.get(s["metric"]) and METRICS[s["metric"]].unit == "s"),
                   LATENCY)
    return throughput, latency


def _mean_over_stages(trial: dict, metric: str, weights: list[float]) -> float | None:
    """As the objective and pareto.csv take it: the stage weights' mean over the stages it ran."""
    stages = trial["stages"]
    if not stages or any(stage.get(metric) is None for stage in stages):
        return None
    return weighted_mean(stages, metric, weights)


def tradeoff_points(summary: dict) -> tuple[dict, list]:
    """experiment_id -> (throughput, latency), each the (stage-weighted) mean over the trial's
    stages, and the ids on the Pareto front: of the trials that ran every stage only, as a cut
    trial's means are of its low-load stages."""
    throughput, latency = tradeoff_axes(summary)
    weights = [stage.get("weight", 1.0) for stage in summary.get("stages", [])] or None
    points = {}
    for trial in _measured(summary):
        tp, lat = _mean_over_stages(trial, throughput, weights), _mean_over_stages(trial, latency, weights)
        if tp is not None and lat is not None:
            points[trial["experiment_id"]] = (tp, lat)
    completed = {t["experiment_id"] for t in summary["all_results"] if t["status"] == "completed"}
    front = pareto_front({key: {throughput: tp, latency: lat} for key, (tp, lat) in points.items() if key in completed})
    return points, front


def write_tradeoff_plot(summary: dict, path: Path) -> Path | None:
    """Throughput against latency, each trial's mean over the stages it ran, with the Pareto front
    and the SLO limits drawn."""
    plt = _pyplot()
    throughput, latency = tradeoff_axes(summary)
    points, front_ids = tradeoff_points(summary)
    if not points:
        path.unlink(missing_ok=True)
        return None
    by_id = {t["experiment_id"]: t for t in summary["all_results"]}
    figure, axes = plt.subplots(figsize=(8, 5))
    for key, (tp, lat) in points.items():
        trial = by_id[key]
        color = BASELINE if trial["baseline"] else BEST if key == _best_id(summary) else \
            STOPPED if trial["status"] != "completed" else OTHER
        axes.scatter(lat, tp, color=color, s=60 if color in (BEST, BASELINE) else 30, zorder=3)
        axes.annotate(str(key), (lat, tp), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = sorted((points[key][1], points[key][0]) for key in front_ids)
    axes.plot([lat for lat, _ in front], [tp for _, tp in front], color=BEST, alpha=0.5, linewidth=1.5,
              label="Pareto front")
    for slo in summary["slos"]:
        if slo["metric"] == latency:
            axes.axvline(slo["limit"], color=STOPPED, linestyle=":", label=f"SLO {latency} <= {slo['limit']:g}")
        if slo["metric"] == throughput:
            axes.axhline(slo["limit"], color=STOPPED, linestyle=":", label=f"SLO {throughput} >= {slo['limit']:g}")
    over = "weighted mean over stages" if len({s.get("weight", 1.0) for s in summary.get("stages", [])}) > 1 \
        else "mean over stages"
    axes.set_xlabel(f"{with_unit(latency)}, {over}")
    axes.set_ylabel(f"{with_unit(throughput)}, {over}")
    axes.set_title("Throughput against latency (green: best, black: engine defaults, red: not completed)")
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    return _save(figure, path)


def chosen_on(summary: dict) -> tuple[dict[int, float], tuple[int, float] | None]:
    """The numbers the winner was chosen on: each re-measured finalist's mean (beside its search
    run, which was picked for being high), and the engine defaults' (experiment, value): their
    re-measured mean, else their run in the search."""
    remeasured = {c["experiment_id"]: c["mean"] for c in summary.get("confirmation") or [] if c.get("mean") is not None}
    trial = next((t for t in summary["all_results"] if t["baseline"] and t["objective_score"] is not None), None)
    baseline = None if trial is None else \
        (trial["experiment_id"], remeasured.get(trial["experiment_id"], trial["objective_score"]))
    return remeasured, baseline


def write_parameter_plot(summary: dict, path: Path) -> Path | None:
    """The objective against each parameter's values: which settings matter."""
    plt = _pyplot()
    metric = summary["objective"]["metric"]
    scored = [t for t in summary["all_results"] if t["objective_score"] is not None and not t["baseline"]]
    names = sorted({name for t in scored for name in t["parameters"]})
    if not scored or not names:
        path.unlink(missing_ok=True)
        return None
    remeasured, baseline = chosen_on(summary)
    again = [t for t in scored if t["experiment_id"] in remeasured]
    figure, grid = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False, sharey=True)
    for axes, name in zip(grid[0], names):
        values = [t["parameters"].get(name) for t in scored]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = None if numeric else sorted({str(v) for v in values})
        xs = values if numeric else [labels.index(str(v)) for v in values]
        axes.scatter(xs, [t["objective_score"] for t in scored],  # red: cut short, its low-load stages only
                     c=[BEST if t["experiment_id"] == _best_id(summary) else
                        OTHER if t["status"] == "completed" else STOPPED for t in scored], zorder=3)
        if again:
            axes.scatter([xs[scored.index(t)] for t in again], [remeasured[t["experiment_id"]] for t in again],
                         marker="D", facecolors="none", edgecolors=BASELINE, zorder=4, label="re-measured mean")
        if labels:
            axes.set_xticks(range(len(labels)), labels, rotation=30)
        if baseline is not None:
            axes.axhline(baseline[1], color=BASELINE, linestyle="--",
                         label="engine defaults" + (" (re-measured mean)" if baseline[0] in remeasured else ""))
        axes.set_xlabel(name)
        axes.grid(alpha=0.3)
    grid[0][0].set_ylabel(with_unit(metric))
    if baseline is not None or again:
        grid[0][0].legend(loc="best")
    figure.suptitle(f"{metric} against each parameter (green: best, red: cut short, its low-load stages only)")
    return _save(figure, path)


def trial_end_times(summary: dict, results_dir: Path) -> dict:
    """experiment_id -> seconds from the run's first trial start to this trial's end, from each
    trial's timeline.json (absent when the trials' files live in remote storage)."""
    marks = {}
    for trial in summary["all_results"]:
        try:
            marks[trial["experiment_id"]] = json.loads(
                (results_dir / "trials" / trial["trial_id"] / "timeline.json").read_text())
        except (OSError, ValueError):
            pass
    starts = [m["trial_start"] for m in marks.values() if "trial_start" in m]
    if not starts:
        return {}
    return {key: m["trial_end"] - min(starts) for key, m in marks.items() if "trial_end" in m}


def best_over_time(trials: list[dict], ends: dict, better: Callable[[float, float], bool]) -> list[tuple]:
    """(end time, best objective so far) in the order the trials ended: trials overlap, and one
    started later may end sooner, so the running best is taken in this order, not the start order."""
    timed, best = [], None
    for end, value in sorted((ends[t["experiment_id"]], t["objective_score"]) for t in trials
                             if ends.get(t["experiment_id"]) is not None):
        best = value if best is None or better(value, best) else best
        timed.append((end, best))
    return timed


def write_progress_plot(summary: dict, path: Path, ends: dict) -> Path | None:
    """The best objective found so far, against trials and against time: whether more trials
    would likely have found better."""
    plt = _pyplot()
    metric = summary["objective"]["metric"]
    better: Callable[[float, float], bool] = ((lambda a, b: a > b) if summary["objective"]["direction"] == "maximize"
                                             else (lambda a, b: a < b))
    scored = sorted((t for t in summary["all_results"] if t["objective_score"] is not None and t["status"] == "completed"),
                    key=lambda t: t["experiment_id"])
    if not scored:
        path.unlink(missing_ok=True)
        return None
    best, curve = None, []
    for trial in scored:
        if best is None or better(trial["objective_score"], best):
            best = trial["objective_score"]
        curve.append((trial["experiment_id"], ends.get(trial["experiment_id"]), best))
    timed = best_over_time(scored, ends, better)
    figure, grid = plt.subplots(1, 2 if timed else 1, figsize=(12 if timed else 6, 4), squeeze=False)
    grid[0][0].step([key for key, _, _ in curve], [value for _, _, value in curve], where="post", marker="o")
    grid[0][0].set_xlabel("trial (in the order they started)")
    grid[0][0].set_ylabel(f"best {with_unit(metric)} so far")
    if timed:
        grid[0][1].step([end / 60 for end, _ in timed], [value for _, value in timed], where="post", marker="o")
        grid[0][1].set_xlabel("minutes since the first trial started")
        grid[0][1].set_ylabel(f"best {with_unit(metric)} so far")
    for axes in grid[0]:
        axes.grid(alpha=0.3)
    figure.suptitle(f"{summary['task_name']}: the search's progress (completed trials)")
    return _save(figure, path)
