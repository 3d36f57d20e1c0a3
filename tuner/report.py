"""`autotuner report RESULTS_DIR`: the run as one offline page (index.html) with its plots, written
at the end of every run and redrawn on demand, also while a run is going (its results.json is
rewritten after every trial); `autotuner report A B`: two runs side by side."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2

from llm_autotuner.errors import TaskError
from llm_autotuner.metrics import figure
from llm_autotuner.tuner import plots
from llm_autotuner.tuner.results import fmt, p_text

PLOTS = "plots"  # the folder beside index.html that holds its images
EXPORTS = ("best.json", "best_command.txt", "best_inferenceservice.yaml")
ONLY_LISTED = 20  # configs one run measured and the other did not, listed by name in `report A B`
_PAGES = jinja2.Environment(loader=jinja2.PackageLoader("llm_autotuner.templates", "."),
                            autoescape=True, undefined=jinja2.StrictUndefined)


def read_summary(results_dir: Path) -> dict:
    path = results_dir / "results.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8 text
        raise TaskError(f"{path}: cannot read results ({' '.join(str(error).split())})") from None
    needed = ("task_name", "objective", "slos", "all_results", "best_result")
    if not isinstance(summary, dict) or any(key not in summary for key in needed):
        raise TaskError(f"{path}: not the results.json of an autotuner run (it needs {', '.join(needed)})")
    return summary


def _status(summary: dict) -> str:
    done = f"{summary['total_experiments']} trials, {summary['successful_experiments']} measured"
    if summary.get("in_progress"):
        return f"The run is still going (or was cut off): {done} so far."
    if summary.get("stopped_because"):
        return f"Stopped: {summary['stopped_because']} ({done})."
    if summary.get("interrupted"):
        return f"Interrupted: {done}."
    return f"Finished: {done}."


def _sorted_trials(summary: dict) -> list[dict]:
    """Best first: the re-measured configs in the order that chose the winner (their mean of
    re-measurements, not their single run in the search, which was picked for being high); then
    the other trials that ran every stage by their objective in its direction, then those cut
    short (their value is the mean of their low-load stages only: for a latency it would outrank
    every full run), then the rest."""
    maximize = summary["objective"]["direction"] == "maximize"
    finalists = [row["experiment_id"] for row in summary.get("confirmation") or []]
    by_id = {t["experiment_id"]: t for t in summary["all_results"]}

    def ranked(trials: list[dict]) -> list[dict]:
        return sorted(trials, key=lambda t: t["objective_score"], reverse=maximize)

    rest = [t for t in summary["all_results"] if t["experiment_id"] not in finalists]
    scored = [t for t in rest if t["objective_score"] is not None]
    unscored = [t for t in rest if t["objective_score"] is None]
    return ([by_id[key] for key in finalists if key in by_id] + ranked([t for t in scored if t["status"] == "completed"])
            + ranked([t for t in scored if t["status"] != "completed"]) + unscored)


def draw(summary: dict, results_dir: Path) -> list[dict]:
    """Every plot there is data for, in the page's order: {file, caption}."""
    folder = results_dir / PLOTS
    folder.mkdir(exist_ok=True)
    (results_dir / "stages.png").unlink(missing_ok=True)  # where versions before 0.2 drew the stage plot
    throughput, latency = plots.tradeoff_axes(summary)
    metric = summary["objective"]["metric"]
    wanted = [
        ("stages.png", lambda path: plots.write_stage_plot(summary, path),
         f"{metric} of every trial at each stage of rising concurrency: red lines are trials the scheduler "
         "stopped early, green the winner, dashed the engine defaults."),
        ("tradeoff.png", lambda path: plots.write_tradeoff_plot(summary, path),
         f"{throughput} against {latency}, each trial's (stage-weighted) mean over its stages: the green line is the Pareto "
         "front of the trials that ran every stage (none of them is better on both), dotted lines are the SLO limits."),
        ("parameters.png", lambda path: plots.write_parameter_plot(summary, path),
         f"{metric} against each parameter's values, each trial's single run in the search: a parameter whose "
         "points spread from low to high matters; red points are trials cut short (their low-load stages only); "
         "hollow diamonds are the finalists' re-measured means (what chose the winner); the dashed line is the "
         "engine defaults' re-measured mean (their run in the search when they were not re-measured)."),
        ("progress.png", lambda path: plots.write_progress_plot(summary, path,
                                                                 plots.trial_end_times(summary, results_dir)),
         f"The best {metric} found so far, against trials and (where the trials' timelines are at hand) "
         "time: a curve still rising at the end says more trials would likely find better."),
    ]
    drawn = []
    for name, write, caption in wanted:
        if write(folder / name):
            drawn.append({"file": f"{PLOTS}/{name}", "caption": caption})
    return drawn


def write_report(results_dir: Path) -> Path:
    """index.html and its plots in `results_dir`, from its results.json."""
    summary = read_summary(results_dir)
    best = summary.get("best_result")
    selection = summary.get("selection") or {}
    notes = []
    if "port-forward" in summary.get("measured_via", []):
        notes.append("Measured through a port-forward: TTFT and ITL include the Kubernetes API server's tunnel; "
                     "compare configs with each other, not with in-cluster numbers.")
    names = sorted({name for t in summary["all_results"] for name in t["parameters"]})
    page = _PAGES.get_template("report.html.j2").render(
        s=summary, status=_status(summary), notes=notes, best=best, metric=summary["objective"]["metric"],
        gain=summary.get("gain_over_baseline") if best and not _is_baseline(summary, best) else None,
        best_is_baseline=bool(best) and _is_baseline(summary, best),
        gain_p=None if selection.get("gain_p_value") is None else p_text(selection["gain_p_value"]),
        noise=selection.get("noise") or (selection.get("why") if best else None),
        why=selection.get("why") or "no trial completed every stage (see results.json for the errors)",
        exports=[name for name in EXPORTS if (results_dir / name).is_file()],
        trials=_sorted_trials(summary), names=names, plots=draw(summary, results_dir), fmt=fmt, figure=figure,
        remeasured={row["experiment_id"]: row for row in summary.get("confirmation") or []})
    path = results_dir / "index.html"
    path.write_text(page)
    return path


def _is_baseline(summary: dict, best: dict) -> bool:
    return best["experiment_id"] == (summary.get("baseline") or {}).get("experiment_id")


def compare(first_dir: Path, second_dir: Path) -> str:
    """Two runs side by side, as text: the configs both measured with each run's number, and what
    changed in the winner."""
    first, second = read_summary(first_dir), read_summary(second_dir)
    metric = first["objective"]["metric"]
    if second["objective"]["metric"] != metric:
        raise TaskError(f"report: {first_dir} optimises {metric} and {second_dir} "
                        f"{second['objective']['metric']}: their numbers do not compare")

    def by_config(summary: dict) -> dict[str, dict]:
        # Completed trials only: a trial cut after stage 1 has a low-load value, not the run's.
        return {("engine defaults" if t["baseline"] else json.dumps(t["parameters"], sort_keys=True)): t
                for t in summary["all_results"] if t["objective_score"] is not None and t["status"] == "completed"}

    a, b = by_config(first), by_config(second)
    lines = [f"{metric}: A = {first_dir}, B = {second_dir}", f"{'config':<60} {'A':>10} {'B':>10} {'B/A':>7}"]
    for key in sorted(a.keys() & b.keys()):
        x, y = a[key]["objective_score"], b[key]["objective_score"]
        lines.append(f"{key[:60]:<60} {figure(x):>10} {figure(y):>10} {y / x if x else float('nan'):>7.3f}")
    for name, mine, theirs in (("A", a, b), ("B", b, a)):
        keys = sorted(mine.keys() - theirs.keys())
        if keys:  # which, so a user can re-run them in the other setting
            lines.append(f"measured only in {name} ({len(keys)} config{'s' * (len(keys) > 1)}):")
            lines += [f"  {key}  {figure(mine[key]['objective_score'])}" for key in keys[:ONLY_LISTED]]  # whole: to re-run
            if len(keys) > ONLY_LISTED:
                lines.append(f"  and {len(keys) - ONLY_LISTED} more")
    winners = [(s.get("best_result") or {}) for s in (first, second)]
    if winners[0].get("parameters") == winners[1].get("parameters"):
        lines.append(f"Winner: the same config in both ({_describe(winners[0])}): "
                     f"{figure(winners[0].get('objective_score'))} in A, {figure(winners[1].get('objective_score'))} in B")
    else:
        changed = sorted({k for w in winners for k in w.get("parameters", {})
                          if winners[0].get("parameters", {}).get(k) != winners[1].get("parameters", {}).get(k)})
        lines.append(f"Winner changed: A {_describe(winners[0])} ({figure(winners[0].get('objective_score'))}), "
                     f"B {_describe(winners[1])} ({figure(winners[1].get('objective_score'))}); "
                     f"differs in {', '.join(changed) or 'nothing named'}")
    return "\n".join(lines)


def _describe(best: dict) -> str:
    if not best:
        return "none"
    # The baseline's parameters are all None (each flag left to the engine).
    return " ".join(f"{k}={v}" for k, v in sorted(best["parameters"].items()) if v is not None) or "the engine defaults"
