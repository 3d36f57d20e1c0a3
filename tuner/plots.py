"""stages.png: the objective of every trial stage by stage, so ASHA's cuts and the winner show at a glance."""

from __future__ import annotations

from pathlib import Path


def write_stage_plot(summary: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    metric = summary["objective"]["metric"]
    concurrencies = [stage["concurrency"] for stage in summary["stages"]]
    trials = [t for t in summary["all_results"] if t["stages"]]
    if not trials:
        path.unlink(missing_ok=True)  # an earlier attempt's plot (a resumed run) would show other trials
        return None
    best_id = (summary.get("best_result") or {}).get("experiment_id")
    figure, axes = plt.subplots(figsize=(8, 5))
    for trial in trials:
        values = [stage[metric] for stage in trial["stages"]]
        stages = list(range(1, len(values) + 1))
        if trial["baseline"]:
            style = dict(color="black", linestyle="--", linewidth=2, label="engine defaults")
        elif trial["experiment_id"] == best_id:
            style = dict(color="tab:green", linewidth=2.5, label=f"best (trial {best_id})")
        elif trial["status"] == "stopped-by-scheduler":
            style = dict(color="tab:red", alpha=0.5, linewidth=1)
        else:
            style = dict(color="tab:blue", alpha=0.6, linewidth=1)
        axes.plot(stages, values, marker="o", **style)
    axes.set_xticks(range(1, len(concurrencies) + 1),
                    [f"stage {i}\nconcurrency {c}" for i, c in enumerate(concurrencies, 1)])
    axes.set_ylabel(metric)
    axes.set_title(f"{summary['task_name']}: {metric} per stage (red: stopped early by ASHA)")
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
