"""Turn a finished (or interrupted) Ray Tune run into results.json, trials.csv, best_command.txt
and a summary table."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
from statistics import fmean, pstdev
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from llm_autotuner.cluster.engines import PROFILES, Launch
from llm_autotuner.outcome import BASELINE_KEY, Outcome, trial_params
from llm_autotuner.trainables.trial import Resolved
from llm_autotuner.errors import lost_worker, trial_error
from llm_autotuner.metrics import maximize
from llm_autotuner.objective import gain, weighted_mean
from llm_autotuner.task import Task

LAUNCH_LINE_PORT = 8080


@dataclass
class TrialRecord:
    trial_id: str
    parameters: dict[str, Any]
    baseline: bool
    reports: list[dict]  # every tune.report of the trial, in order
    ray_error: str | None = None
    experiment_id: int = 0
    ended: bool = True  # False when the run was interrupted (Ctrl-C) while this trial ran
    infrastructure: bool = False  # it failed for the platform's reason (a lost worker, a 403), not the config's
    cut_by_run: bool = False  # Ray stopped it mid-way because the whole run was ending (budget, patience)
    ray_failures: int = 0  # how often Ray saw it fail (a lost worker); it ran it again after each but a last one
    stages: list[dict] = field(init=False)

    def __post_init__(self) -> None:
        self.stages = [r["metrics"] for r in self.reports if r.get("metrics")]

    @property
    def last(self) -> dict:
        return self.reports[-1] if self.reports else {}

    @property
    def error(self) -> str | None:
        return self.ray_error or self.last.get("error")

    @property
    def status(self) -> Outcome:
        if self.error:
            return Outcome.FAILED_INFRASTRUCTURE if self.infrastructure else Outcome(self.last.get("outcome", "failed"))
        stated = self.last.get("outcome")
        if stated:
            return Outcome(stated)  # the trial decided its end: last stage, broken SLO, STOP file
        if not self.ended:
            return Outcome.INTERRUPTED
        # Ray ended it between stages: the run's end (or before its first stage: only the run can), else the scheduler.
        return Outcome.STOPPED_BY_BUDGET if self.cut_by_run or not self.stages else Outcome.STOPPED_BY_SCHEDULER

    @property
    def objective(self) -> float | None:
        # A failed trial has no value, even if stages came in before its engine or worker was lost.
        return None if self.error else self.last.get("objective")

    @property
    def score(self) -> float:
        return float("-inf") if self.error else self.last.get("score", float("-inf"))


def read_reports(trial_dir: str | os.PathLike) -> list[dict]:
    """The reports of the trial's last attempt, from Ray Tune's result.json (one JSON object per
    line). Ray appends a trial it runs again (its worker was lost, --resume) to the same file, and
    the new attempt counts its iterations from 1 again: what came before belongs to another engine."""
    path = Path(trial_dir) / "result.json"
    if not path.is_file():
        return []
    reports: list[dict] = []
    for line in path.read_text().splitlines():
        if line.strip():
            report = json.loads(line)
            if reports and report.get("training_iteration", 0) <= reports[-1].get("training_iteration", 0):
                reports = []
            reports.append(report)
    return reports


def ray_failures(trial_dir: str | os.PathLike) -> int:
    """How many failures Ray recorded for the trial (one "Failure # N" entry per failure in its error.txt)."""
    path = Path(trial_dir) / "error.txt"
    return path.read_text(errors="replace").count("Failure # ") if path.is_file() else 0


def from_result_grid(grid, ended: set[str] | None = None, cut_by_run: set[str] = frozenset()) -> list[TrialRecord]:
    """Records of every trial; those whose id is not in `ended` (when given) were interrupted,
    those in `cut_by_run` were stopped mid-way by the run's end (time budget, patience, the guard)."""
    records = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        record = _record(trial_id, result.config, result.path, result.error, ended=ended is None or trial_id in ended)
        record.cut_by_run = trial_id in cut_by_run
        records.append(record)
    return _in_creation_order(records)


def from_trials(trials, ended: set[str]) -> list[TrialRecord]:
    """Records of the trials that have ended, from Ray Tune's live Trial objects (as a callback
    sees them): those Ray marked as ended, and those in `ended` (ending now: Ray changes their
    status after the callbacks)."""
    records = []
    for trial in trials:
        if trial.local_path and (trial.status in ("TERMINATED", "ERROR") or trial.trial_id in ended):
            error = None
            if trial.status == "ERROR":
                error = trial_error(trial) or RuntimeError("Ray reported the trial as failed (see its error.txt)")
            records.append(_record(trial.trial_id, trial.config, trial.local_path, error, ended=True))
    return _in_creation_order(records)


def _record(trial_id: str, config: dict | None, trial_dir: str, error: BaseException | None,
            ended: bool) -> TrialRecord:
    config = config or {}
    lost = lost_worker(error)
    return TrialRecord(trial_id=trial_id, parameters=trial_params(config), baseline=bool(config.get(BASELINE_KEY)),
                       reports=read_reports(trial_dir), ray_error=lost or (_first_line(error) if error else None),
                       experiment_id=_creation_number(trial_dir, trial_id), ended=ended,
                       infrastructure=lost is not None, ray_failures=ray_failures(trial_dir))


def _in_creation_order(records: list[TrialRecord]) -> list[TrialRecord]:
    # Ray puts a creation counter after the id in each trial's folder name: experiment_id.
    return sorted(records, key=lambda record: record.experiment_id)


class LiveResults(Callback):
    """Rewrites results.json and trials.csv (atomically) each time a trial ends, so a crash at any
    moment leaves valid files holding every trial finished so far. The run's end writes the final ones."""

    def __init__(self, task: Task, resolved: Resolved, results_dir: Path, experiment_dir: str):
        self.task, self.resolved, self.results_dir, self.experiment_dir = task, resolved, results_dir, experiment_dir

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._write(trials, trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._write(trials, trial.trial_id)

    def _write(self, trials, ending: str) -> None:
        summary = summarize(self.task, self.resolved, from_trials(trials, {ending}), self.experiment_dir)
        summary["in_progress"] = True
        write(self.results_dir, summary)


def _creation_number(trial_dir: str, trial_id: str) -> int:
    match = re.search(rf"_{re.escape(trial_id)}_(\d+)_", Path(trial_dir).name)
    return int(match.group(1)) if match else 0


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"


def launch_line(task: Task, resolved: Resolved, parameters: dict[str, Any]) -> list[str]:
    profile = PROFILES[task.engine.name]
    launch = Launch(resolved.executable, resolved.model_path, resolved.served_name, "127.0.0.1", LAUNCH_LINE_PORT)
    return profile.argv(launch, profile.merged(task.engine.args, parameters))


def objective_values(record: TrialRecord, metrics: list[str], weights: list[float] | None) -> dict[str, float]:
    """Each objective as the (weighted) mean over the trial's stages."""
    return {metric: weighted_mean(record.stages, metric, weights) for metric in metrics}


def pareto_front(points: dict[int, dict[str, float]]) -> list[int]:
    """The ids whose objective vectors no other point dominates (at least as good everywhere,
    better somewhere), in the given order."""
    def oriented(values: dict[str, float]) -> list[float]:
        return [value if maximize(metric) else -value for metric, value in values.items()]

    vectors = {key: oriented(values) for key, values in points.items()}
    return [key for key, mine in vectors.items()
            if not any(all(o >= m for o, m in zip(other, mine)) and other != mine
                       for other_key, other in vectors.items() if other_key != key)]


def candidates(task: Task, records: list[TrialRecord]) -> list[TrialRecord]:
    """Trials that completed every stage, those that met every SLO (soft ones too) if any did,
    best score first, each config once (a searcher may propose a config twice)."""
    finished = [r for r in records if r.status == Outcome.COMPLETED]
    met_all = [r for r in finished if all((r.last.get("slos_met") or {}).values())]
    seen: set[str] = set()
    distinct = []
    for record in sorted(met_all or finished, key=lambda r: r.score, reverse=True):
        key = config_key(record.parameters, record.baseline)
        if key not in seen:
            seen.add(key)
            distinct.append(record)
    return distinct


def config_key(parameters: dict[str, Any], baseline: bool) -> str:
    return json.dumps([parameters, baseline], sort_keys=True, default=str)


def summarize(task: Task, resolved: Resolved, records: list[TrialRecord], experiment_dir: str,
              confirmations: dict[str, list[float]] | None = None) -> dict:
    """`confirmations`: config_key -> objective values of the re-measurements after the search.
    With them the winner is chosen on the mean of all its measurements, not on one lucky run."""
    metric = task.objective.metric
    finished = [r for r in records if r.status == Outcome.COMPLETED]
    confirmed = []
    for record in candidates(task, records):
        runs = (confirmations or {}).get(config_key(record.parameters, record.baseline))
        if runs:
            confirmed.append((record, [record.objective] + runs))
    # The recommended point: the best on the primary objective among trials that met every SLO
    # (soft ones included); if none did, the best score; on the mean when re-measured.
    sign = 1 if maximize(metric) else -1
    if confirmed:
        best, best_runs = max(confirmed, key=lambda pair: sign * fmean(pair[1]))
    else:
        best, best_runs = next(iter(candidates(task, records)), None), None
    values = {r.experiment_id: objective_values(r, task.objective.metrics, task.benchmark.stage_weights)
              for r in finished}
    front = pareto_front(values) if task.objective.secondary else []
    baseline = next((r for r in records if r.baseline), None)
    baseline_ok = baseline is not None and baseline.status == Outcome.COMPLETED

    def brief(record: TrialRecord, runs: list[float] | None = None) -> dict:
        result = {"experiment_id": record.experiment_id, "trial_id": record.trial_id,
                  "parameters": record.parameters, "objective_score": fmean(runs) if runs else record.objective,
                  "command": shlex.join(launch_line(task, resolved, record.parameters))}
        if runs:
            result["measurements"] = runs
            result["spread"] = {"min": min(runs), "max": max(runs), "stdev": pstdev(runs)}
        return result

    baseline_runs = next((runs for record, runs in confirmed if record.baseline), None)
    baseline_value = fmean(baseline_runs) if baseline_runs else (baseline.objective if baseline else None)

    return {
        "task_name": task.name,
        "engine": task.engine.name,
        "objective": {"metric": metric, "direction": "maximize" if maximize(metric) else "minimize"},
        "slos": [{"metric": l.metric, "limit": l.limit, "hard": l.hard} for l in task.limits],
        "stages": [{"stage": i, "concurrency": c, "traffic_scenario": task.benchmark.traffic_scenario}
                   for i, c in enumerate(task.benchmark.concurrency, 1)],
        "total_experiments": len(records),
        "successful_experiments": sum(r.status in (Outcome.COMPLETED, Outcome.STOPPED_BY_SCHEDULER, Outcome.STOPPED_BY_BUDGET) and bool(r.stages)
                                      for r in records),
        "interrupted": any(not r.ended for r in records),
        "in_progress": False,  # True in the files rewritten after each trial while the run goes on
        "stopped_because": None,
        "best_result": brief(best, best_runs) if best else None,
        "baseline": brief(baseline, baseline_runs) | {"status": baseline.status} if baseline else None,
        "gain_over_baseline": (gain(fmean(best_runs) if best_runs else best.objective, baseline_value, metric)
                               if best and baseline_ok else None),
        "confirmation": [{"experiment_id": record.experiment_id, "parameters": record.parameters,
                          "baseline": record.baseline, "measurements": runs, "mean": fmean(runs),
                          "stdev": pstdev(runs)} for record, runs in confirmed],
        "objectives": task.objective.metrics,
        "pareto_front": [{"experiment_id": key, "parameters": next(r.parameters for r in finished
                                                                   if r.experiment_id == key), **values[key]}
                         for key in front],
        "all_results": [{
            "experiment_id": r.experiment_id,
            "trial_id": r.trial_id,
            "baseline": r.baseline,
            "parameters": r.parameters,
            "status": r.status,
            "objective_score": r.objective,
            "stages_completed": len(r.stages),
            "objectives": values.get(r.experiment_id),
            "stages": r.stages,
            "slo_violation": r.last.get("violation"),
            "slos_met": r.last.get("slos_met"),
            "error": r.error,
            "ray_failures": r.ray_failures,
        } for r in records],
        "ray_experiment_dir": experiment_dir,
    }


def write(results_dir: Path, summary: dict) -> None:
    """results.json, trials.csv, and best_command.txt and pareto.csv when there is a winner or a
    front, each replaced atomically; one of those two left from an earlier write that no longer
    applies (a resumed run) is removed, so the folder never shows a winner the summary has not."""
    results_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(results_dir / "results.json", json.dumps(summary, indent=2, default=str) + "\n")
    _atomic_write(results_dir / "trials.csv", trials_csv(summary))
    best = summary.get("best_result")
    optional = {"best_command.txt": best["command"] + "\n" if best else None,
                "pareto.csv": pareto_csv(summary) if summary.get("pareto_front") else None}
    for name, text in optional.items():
        if text is None:
            (results_dir / name).unlink(missing_ok=True)
        else:
            _atomic_write(results_dir / name, text)


RESULT_FILES = ("results.json", "trials.csv", "best_command.txt", "pareto.csv", "stages.png")


def files_in(results_dir: Path) -> list[str]:
    """The result files a run left in `results_dir`, for its closing line."""
    return [name for name in RESULT_FILES if (results_dir / name).is_file()]


def pareto_csv(summary: dict) -> str:
    names = sorted({name for row in summary["pareto_front"] for name in row["parameters"]})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["experiment_id", *summary["objectives"], *names])
    for row in summary["pareto_front"]:
        writer.writerow([row["experiment_id"], *[row[m] for m in summary["objectives"]],
                         *[row["parameters"].get(name) for name in names]])
    return buffer.getvalue()


def trials_csv(summary: dict) -> str:
    names = sorted({name for row in summary["all_results"] for name in row["parameters"]})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["experiment_id", "trial_id", "baseline", "status", "stages_completed",
                     "objective_score", *names, "slo_violation", "error"])
    for row in summary["all_results"]:
        writer.writerow([row["experiment_id"], row["trial_id"], row["baseline"], row["status"],
                         row["stages_completed"], row["objective_score"],
                         *[row["parameters"].get(name) for name in names],
                         row["slo_violation"], row["error"]])
    return buffer.getvalue()


def _atomic_write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def table(summary: dict) -> str:
    """The summary a run prints: one line per trial, then the best config and its gain."""
    metric = summary["objective"]["metric"]
    rows = summary["all_results"]
    names = sorted({name for row in rows for name in row["parameters"]})
    header = ["#", "status", "stages", metric, *names]
    lines = [header]
    for row in rows:
        value = row["objective_score"]
        params = ["default" if row["baseline"] else _fmt(row["parameters"].get(name)) for name in names]
        lines.append([str(row["experiment_id"]), row["status"], str(row["stages_completed"]),
                      "-" if value is None else f"{value:.4g}", *params])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in lines)
    if summary.get("in_progress"):
        text = "The run is still going, or was cut off: the trials finished so far.\n" + text
    best = summary["best_result"]
    if best is None:
        return text + "\nNo trial completed every stage; see results.json for the errors."
    text += f"\n\nBest: experiment {best['experiment_id']}  {metric} = {best['objective_score']:.4g}"
    if best.get("measurements"):
        text += f" (mean of {len(best['measurements'])} runs, stdev {best['spread']['stdev']:.3g})"
    if best["experiment_id"] == (summary["baseline"] or {}).get("experiment_id"):
        text += "  (the engine defaults: no tuned config beat them)"
    elif summary["gain_over_baseline"] is not None:
        text += f"  ({summary['gain_over_baseline']:+.1%} vs. engine defaults " \
                f"{summary['baseline']['objective_score']:.4g})"
    text += f"\nLaunch: {best['command']}"
    if summary.get("pareto_front"):
        objectives = summary["objectives"]
        text += f"\n\nPareto front over {', '.join(objectives)} (pareto.csv):"
        for row in summary["pareto_front"]:
            text += f"\n  experiment {row['experiment_id']}: " + ", ".join(f"{m} {row[m]:.4g}" for m in objectives)
    return text


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
