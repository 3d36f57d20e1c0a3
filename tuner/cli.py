"""The `autotuner` command. Exit codes: 0 ok, 1 the run failed or was interrupted, 2 bad input or a broken setup
(one line, no traceback), 130 interrupted twice."""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from llm_autotuner.errors import AutotunerError, SetupError, TaskError
from llm_autotuner.metrics import counted

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autotuner", description="Tune LLM inference engine flags with Ray Tune.")
    parser.add_argument("--version", action="version", version=f"autotuner {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="tune the engine described by a task file")
    run.add_argument("task", help="task file (YAML or JSON)")
    run.add_argument("--resume", action="store_true",
                     help="continue the task's interrupted run (in its results_dir/<name>/; finished trials are kept)")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--no-dashboard", action="store_true",
                     help="start the local Ray without its dashboard (CI, a machine short of memory)")
    run.add_argument("--num-samples", type=int, help="override search.num_samples")
    run.add_argument("--algorithm", help="override search.algorithm (a name or package.module:Class)")
    run.add_argument("--quiet", action="store_true",
                     help="a line per event even on a terminal (no live panel redrawn in place)")
    run.add_argument("-v", "--verbose", action="store_true", help="Ray Tune's own warnings too")

    validate = commands.add_parser("validate", help="check a task file and exit")
    validate.add_argument("task", help="task file (YAML or JSON)")

    render = commands.add_parser("render", help="write what N sampled trials would deploy, contacting nothing")
    render.add_argument("task", help="task file (YAML or JSON)")
    render.add_argument("--trials", type=int, default=3, help="how many sampled trials (default 3)")
    render.add_argument("--out", help="folder for the manifests / launch lines (default: print them)")

    cleanup = commands.add_parser("cleanup", help="remove engines and objects left by runs that are over")
    cleanup.add_argument("task", nargs="?", help="a task file: the leftovers of its runs")
    cleanup.add_argument("--all", action="store_true",
                         help="every experiment's leftovers (local engines; with TASK, its namespace too)")
    cleanup.add_argument("--address", help="sweep every node of this Ray cluster (default: RAY_ADDRESS, "
                                           "else this machine only)")

    report = commands.add_parser("report", help="write a run's report page (index.html) and print its summary; "
                                                "with two runs, compare them")
    report.add_argument("results_dir", help="results/<task-name> (finished, or still going)")
    report.add_argument("other", nargs="?", help="a second run's results folder: the two side by side")

    rbac = commands.add_parser("rbac", help="print the Kubernetes RBAC the tuner needs "
                                            "(`autotuner rbac TASK | kubectl apply -f -`)")
    rbac.add_argument("task", nargs="?", help="an OME task file: the rights it uses, in its namespace")
    rbac.add_argument("--namespace", help="without TASK: every right the tuner may use, in this namespace "
                                          "(default: llm-tuning, the file's own)")

    kuberay = commands.add_parser("kuberay", help="print what runs an OME task's driver inside the cluster "
                                                  "(`autotuner kuberay TASK --image IMAGE | kubectl apply -f -`)")
    kuberay.add_argument("task", help="an OME task file (YAML or JSON)")
    kuberay.add_argument("--image", required=True, help="the driver's image, built from this project's Dockerfile")
    kuberay.add_argument("--kind", default="rayjob", choices=["rayjob", "raycluster"],
                         help="a RayJob that runs the task once (default), or a RayCluster to run it in yourself")
    kuberay.add_argument("--results-size", default="10Gi", help="size of the results volume (default 10Gi)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return _COMMANDS[args.command](args)
    except (TaskError, SetupError) as error:
        print(f"autotuner: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except AutotunerError as error:
        print(f"autotuner: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # Ctrl-C while a command loads its modules (seconds: Ray, scipy) or works
        print("autotuner: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


class _OutputThatMayGo(io.TextIOBase):
    """A terminal that went away (an SSH session closed, a pipe whose reader died) must not end a
    run before it writes its results: writes to a closed stream are dropped from then on."""

    def __init__(self, stream):
        self.stream, self.gone = stream, False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # BrokenPipeError; ValueError: the file was closed
                self.gone = True
        return len(text)

    def flush(self) -> None:
        pass  # each write flushed already

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return not self.gone and self.stream.isatty()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"


def _run(args) -> int:
    overrides = {key: value for key, value in (("num_samples", args.num_samples), ("algorithm", args.algorithm))
                 if value is not None}
    sys.stdout, sys.stderr = _OutputThatMayGo(sys.stdout), _OutputThatMayGo(sys.stderr)
    try:
        task = _load_task(args.task, overrides)
        from llm_autotuner.tuner import driver, results  # seconds to import (Ray): a Ctrl-C may land here

        summary = driver.run(task, address=args.address, resume=args.resume, dashboard=not args.no_dashboard,
                             live=sys.stdout.isatty() and not args.quiet, verbose=args.verbose)
    except KeyboardInterrupt:
        if _run_took_a_signal():  # the second: driver.run has killed this run's engines on the way out
            print(f"autotuner: interrupted twice: engines killed without waiting; {task.results_path}/results.json "
                  "holds the trials and re-measurements that had finished (continue with --resume)", file=sys.stderr)
        else:  # before the run's handler was installed: the setup (the engine's build or check, Ray's
            # start), whose processes are stopped on the way out. No trial had started.
            print("autotuner: interrupted during the setup, before any trial: nothing was measured", file=sys.stderr)
        return EXIT_INTERRUPTED
    print()
    print(results.table(summary))
    print(f"\nResults: {task.results_path}/ ({', '.join(results.files_in(task.results_path))})")
    if summary["stopped_because"]:
        print(f"autotuner: {summary['stopped_because']}", file=sys.stderr)
        # A broken setup (engine binary, model) is the user's to fix, like bad input.
        return EXIT_BAD_INPUT if summary.get("setup_failure") else EXIT_FAILED
    if summary["interrupted"]:
        print("The run was interrupted: the results above cover the trials measured so far.")
        return EXIT_FAILED
    return EXIT_OK if summary["best_result"] else EXIT_FAILED


def _run_took_a_signal() -> bool:
    """Whether the run's own handler took a signal (the KeyboardInterrupt is then the second).
    Its module not loaded yet: the Ctrl-C came before the handler could be installed."""
    interrupt = sys.modules.get("llm_autotuner.tuner.interrupt")
    return bool(interrupt and interrupt.handled_a_signal())


def _load_task(path, overrides=None):
    from llm_autotuner.task import load_task as load  # pydantic: imported by the command, inside its Ctrl-C catch

    return load(path, overrides)


def _checked_task(path):
    """The task file loaded and checked as `run` checks it before starting anything; an error names
    the file (a loop over several files tells which one failed)."""
    task = _load_task(path)
    from llm_autotuner.tuner.driver import preflight

    try:
        unchecked = preflight(task)
    except TaskError as error:
        raise TaskError(f"{path}: {error}") from None
    for what in unchecked:
        print(f"{path}: note: {what}", file=sys.stderr)
    return task


def _validate(args) -> int:
    task = _checked_task(args.task)
    from llm_autotuner.tuner.search import num_trials

    searched = num_trials(task) - task.search.baseline
    spent = " (every config of the space)" if task.search.algorithm != "grid" and searched < task.search.num_samples else ""
    trials = f"{counted(searched, 'searched trial')}{spent}" + (
        " and the engine defaults" if task.search.baseline else "")
    top = min(task.search.confirm_top_k, searched)  # the best tuned trials (results.finalists)
    finalists = (f"the {top} best" if top > 1 else "the best") + (" and the engine defaults" if task.search.baseline else "")
    confirm = (f", then {counted(task.search.confirm_repeats, 'more run')} each of {finalists}"
               if top and task.search.confirm_repeats else "")
    print(f"{args.task}: ok ({task.engine.name}, {counted(len(task.search_space), 'parameter')}, "
          f"{counted(len(task.benchmark.concurrency), 'stage')}; {trials}{confirm})")
    return EXIT_OK


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llm-autotuner")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _render(args) -> int:
    if args.trials < 1:
        raise TaskError(f"--trials: must be at least 1 (got {args.trials})")
    task = _checked_task(args.task)  # what a run would refuse is not rendered as if it would deploy
    from llm_autotuner.tuner.render import EARLIER_RENDER, render_trials

    files, notes = render_trials(task, args.trials)
    for note in notes:
        print(note, file=sys.stderr)
    if args.out is None:
        for name, text in files.items():
            print(f"# {name}\n{text}")
        return EXIT_OK
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TaskError(f"--out: {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    # An earlier render's files left beside these would be applied with them (kubectl apply -f DIR).
    stale = [path for path in out.iterdir() if path.is_file() and EARLIER_RENDER.fullmatch(path.name)
             and path.name not in files]
    for path in stale:
        path.unlink()
    for name, text in files.items():
        (out / name).write_text(text)
    removed = f"; removed {len(stale)} an earlier render wrote there ({', '.join(p.name for p in stale)})" if stale else ""
    print(f"wrote {len(files)} files to {out}/: {', '.join(files)}{removed}")
    return EXIT_OK


def _cleanup(args) -> int:
    if args.task is None and not args.all:
        raise TaskError("cleanup: name a TASK, or pass --all")
    from llm_autotuner.cluster.backend import backend_for
    from llm_autotuner.task import LocalDeployment

    task = _load_task(args.task) if args.task else None
    experiment = None if args.all else task.name
    # Local engine processes whatever the task's backend (another run here may have been local),
    # then the task's own backend.
    backends = [backend_for(LocalDeployment())]
    if task is not None and task.deployment.backend != "local":
        backends.append(backend_for(task.deployment))
    address = None
    if args.address or os.environ.get("RAY_ADDRESS"):  # (the driver module imports Ray Tune: only then)
        import ray

        from llm_autotuner.tuner.driver import cluster_address, start_ray

        address = cluster_address(args.address)
        start_ray(backends[0], address)  # with our package shipped: the sweep runs on each node
        nodes = sum(node["Alive"] for node in ray.nodes())
        print(f"sweeping the {nodes} node{'s' * (nodes != 1)} of the Ray cluster at {address}")
    try:
        removed = [line for backend in backends for line in backend.cleanup(experiment)]
    finally:
        if address:
            ray.shutdown()
    print("\n".join(f"removed {what}" for what in removed) or "nothing to clean up")
    return EXIT_OK


def _report(args) -> int:
    from llm_autotuner.tuner.report import compare, read_summary, write_report
    from llm_autotuner.tuner.results import table

    if args.other:
        print(compare(Path(args.results_dir), Path(args.other)))
        return EXIT_OK
    summary = read_summary(Path(args.results_dir))
    print(table(summary))
    print(f"\nReport: {write_report(Path(args.results_dir))}")
    return EXIT_OK


def _rbac(args) -> int:
    import re

    import yaml

    from llm_autotuner.cluster.kube import RBAC_MANIFEST
    from llm_autotuner.cluster.kuberay import rbac

    if args.task and args.namespace:
        raise TaskError("rbac: give TASK (its namespace is used) or --namespace, not both")
    if args.task:
        task = _load_task(args.task)
        if task.deployment.backend != "ome":
            raise TaskError(f"rbac: {args.task} runs its engines on this machine: it needs no Kubernetes rights")
        # (endpoint auto: a port-forward when the driver runs outside the cluster, as this command does)
        documents = rbac(task.deployment.namespace, task.deployment.create_runtime is not None,
                         task.deployment.endpoint in ("auto", "port-forward"))
    elif args.namespace:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", args.namespace) or len(args.namespace) > 63:
            raise TaskError(f"--namespace: {args.namespace!r} is not a Kubernetes namespace name")
        documents = rbac(args.namespace, with_runtime=True, port_forward=True)
    else:
        sys.stdout.write(RBAC_MANIFEST.read_text())  # as shipped, with its comments
        return EXIT_OK
    sys.stdout.write(yaml.safe_dump_all(documents, sort_keys=False))
    return EXIT_OK


def _kuberay(args) -> int:
    import yaml

    from llm_autotuner.cluster import kuberay
    from llm_autotuner.task import parse_task, read_task_file

    from llm_autotuner.tuner.driver import preflight

    data = read_task_file(args.task)
    task = parse_task(data, args.task)
    documents = kuberay.manifests(task, data, args.image, args.kind, args.results_size)
    # The checks `validate` makes, on the task as the pod runs it (no kubeconfig: the pod's own
    # credentials): a task that would fail in the cluster fails here.
    preflight(parse_task(yaml.safe_load(kuberay.in_cluster_task(data)), args.task))
    sys.stdout.write(kuberay.to_yaml(documents))
    return EXIT_OK


_COMMANDS = {"run": _run, "validate": _validate, "render": _render, "report": _report, "cleanup": _cleanup,
             "rbac": _rbac, "kuberay": _kuberay}

if __name__ == "__main__":
    sys.exit(main())
