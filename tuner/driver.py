"""The driver: resolve what trials need, start (or join) Ray, run Ray Tune, write the results."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import logging
import math
import os
import secrets
import shutil
import socket
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Iterable, Iterator

import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.stopper import TimeoutStopper

from llm_autotuner.cluster import flag_catalog, flag_rules, records
from llm_autotuner.cluster.flag_catalog import CATALOGS
from llm_autotuner.cluster.backend import (Backend, backend_for, beyond_offers, cheapest_params, dearest_params,
                                           shortfall, trial_claim)
from llm_autotuner.cluster.engines import EngineProfile, missing_model, profile_for
from llm_autotuner.cluster.nodes import check_nodes, everywhere
from llm_autotuner.cluster.storage import Storage, assemble, collect_here, move_aside, storage_for
from llm_autotuner.metrics import METRICS, counted, maximize
from llm_autotuner.outcome import BASELINE_KEY, trial_params
from llm_autotuner.trainables import next_worker
from llm_autotuner.trainables.trial import GPU_LIST_VARIABLES, Resolved, TrialTrainable
from llm_autotuner.tuner import registry
from llm_autotuner.tuner.registry import GridSearcher
from llm_autotuner.tuner import results as results_io
from llm_autotuner.errors import BriefSyncFailures, QuietLostWorkers, SetupError, TaskError
from llm_autotuner.secrets import scrub_folder
from llm_autotuner.tuner.interrupt import (Interrupt, RunEnd, TrialEnds, ray_in_own_session, signals_deferred,
                                           signals_noted)
from llm_autotuner.tuner.render import winner_files
from llm_autotuner.tuner.report import write_report
from llm_autotuner.tuner.progress import LiveProgress, ProgressPrinter, config_text
from llm_autotuner.tuner.search import (METRIC, MODE, FailureGuard, NoImprovementStopper, build_scheduler, build_searcher,
                          num_trials)
from llm_autotuner.tuner.space import to_ray
from llm_autotuner.task import FloatRange, IntRange, Task, given_values

RAY_EXPERIMENT_NAME = "tune"
CONFIRM_EXPERIMENT_NAME = "confirm"  # the re-measurements of the best configs
# A benchmark cannot resume mid-stage, so trials keep no checkpoints: a restarted trial starts over.
NO_TRIAL_CHECKPOINTS = tune.CheckpointConfig(checkpoint_at_end=False, checkpoint_frequency=0)
# A trial whose worker or node died is run once more (from its start), elsewhere if need be; our
# trainable reports a config's failures as results, so what Ray sees fail is the infrastructure
# (or a bug of ours, which then fails twice). A second loss stops the run (FailureGuard).
RUN_AGAIN_ONCE = tune.FailureConfig(max_failures=1)


ADDRESS_TIMEOUT_S = 10.0


def cluster_address(address: str | None) -> str | None:
    """The Ray cluster to join (`--address`, else RAY_ADDRESS; None: a local Ray of our own), checked
    to answer. Ray Client (ray://) is refused: through it Ray Tune runs its loop in an actor on the
    head node (ray/tune/tuner.py, `_remote_tuner`), where this process's Ctrl-C, its progress lines
    and the callbacks that write the results do not reach."""
    given, where = (address, "--address") if address else (os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS")
    if given and given.startswith("ray://"):
        raise TaskError(f"{where}: {given} is a Ray Client address, which autotuner does not drive; run it on a "
                        f"node of the cluster with --address HOST:6379, or submit it there with `ray job submit`")
    if given == "auto":
        # The cluster `ray start` last recorded on this machine (its head may be gone since); joined
        # by that address, not by Ray's own "auto", which also takes any Ray it finds running here.
        from ray._common.utils import get_ray_address_file

        try:
            given = Path(get_ray_address_file(None)).read_text().strip()
        except OSError:
            given = ""
        if not given:
            raise TaskError(f"{where}: auto: no Ray cluster was started on this machine (`ray start --head`); "
                            "give its head's HOST:PORT")
    host, _, port = (given or "").rpartition(":")
    if host and port.isdigit():
        # ray.init retries an address nothing answers at for good (measured: still retrying after
        # 5 minutes): a run must not hang on a mistyped address.
        try:
            socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S).close()
        except OSError as error:
            raise TaskError(f"{where}: no Ray cluster answers at {given} ({error.strerror or error}); "
                            "start one with `ray start --head`, or give its head's HOST:PORT") from None
    return given


def preflight(task: Task) -> list[str]:
    """What `validate` and `run` check before building or starting anything: the engine and its
    flags, the searcher and the scheduler with their arguments, and the files the task names.
    Returns what could not be checked here, to be said (an "ok" reads as "checked")."""
    profile = profile_for(task.engine.name)
    build_searcher(task, 1), build_scheduler(task)
    _check_flags(task, profile)
    refused = checked_conflicts(task)
    tokenizer = task.model.tokenizer
    if tokenizer and tokenizer.startswith(("/", "./", "../", "~")) and not Path(tokenizer).expanduser().exists():
        raise TaskError(f"model.tokenizer: {tokenizer} does not exist (a local folder, or a hub id such as org/name)")
    backend = backend_for(task.deployment)
    backend.check(profile, task)  # refused when even the smallest config is over what it offers
    over = beyond_offers(trial_claim(task, dearest_params(task), os.cpu_count() or 1), backend.offers())
    if over:
        refused.append(f"search_space: some configs are skipped as infeasible, not deployed: one needs {over}")
    refused += _unlikely_latency_limits(task)
    refused += flag_catalog.measures_nothing(task.engine.name, task.search_space, profile.canonical)
    storage_for(task)  # a storage.filesystem that cannot be built fails here, in one line
    existing = next(path for path in (task.results_path, *task.results_path.parents) if path.exists())
    if not existing.is_dir():
        raise TaskError(f"results_dir: {existing} is a file; the results go into a folder {task.results_path}")
    asked = check_known_flags(task)
    unchecked = refused + ([] if asked else _catalog_notes(task, profile))
    if task.deployment.backend != "local":
        return unchecked
    unchecked += _threads_beyond_cores(task, profile)
    if not asked:
        catalog = f"; only against autotuner's catalog of them ({CATALOGS[task.engine.name][0]})" \
            if task.engine.name in CATALOGS else ""
        unchecked.insert(0, f"the flags were not checked against {task.engine.name}'s --help: it is not installed "
                            f"here{catalog}")
    if missing_model(task.model):
        unchecked.append(f"model.path {task.model.path} is not on this machine: a run with a local Ray refuses it; "
                         "on a Ray cluster (--address) every node that runs trials must have it")
    return unchecked


# Latency limits no request comes near, in seconds: likely meant in milliseconds.
UNLIKELY_SECONDS = {"ttft": 100.0, "tpot": 10.0, "itl": 10.0, "e2e": 1000.0}


def _unlikely_latency_limits(task: Task) -> list[str]:
    return [f"slos.{limit.metric}: {limit.limit:g} s; latency limits are in seconds ({limit.limit:g} ms is "
            f"{limit.limit / 1000:g})" for limit in task.limits if METRICS[limit.metric].unit == "s"
            and limit.limit >= UNLIKELY_SECONDS[limit.metric.split("_")[0]]]


def _threads_beyond_cores(task: Task, profile: EngineProfile) -> list[str]:
    """A trial claims at most one node's CPUs (LocalBackend.claim): more threads share them."""
    cores = len(os.sched_getaffinity(0))  # as Ray counts them: the CPUs this process may use
    places = (("engine.args", task.engine.args), ("search_space", task.search_space))
    return [f"{where}.{name}: {value} is more than this machine's {counted(cores, 'CPU')}: with a "
            f"local Ray a trial holds them all, and its {value} threads share them"
            for where, names in places
            for name, domain in names.items() if profile.canonical(name) == profile.cpu_flag
            for value in [max((v for v in given_values(domain) if isinstance(v, int)), default=0)] if value > cores]


def _check_flags(task: Task, profile: EngineProfile) -> None:
    """No flag the engine's launcher sets itself; and no flag given twice in one place under two
    spellings (`--ctx-size` and its alias `-c`, or `ctx_size`): it would reach the engine once,
    with whichever value came last. No GPU list in the engine's environment: each engine sees the
    GPUs Ray assigned to its trial, or two trials could share one."""
    for name in GPU_LIST_VARIABLES & set(task.engine.env):
        raise TaskError(f"engine.env.{name}: the tuner gives each engine the GPUs Ray assigned to its trial")
    for where, names in (("engine.args", task.engine.args), ("search_space", task.search_space)):
        seen: dict[str, str] = {}
        for name in names:
            canonical = profile.canonical(name)
            _check_resource_flag(profile, canonical, f"{where}.{name}", names[name])
            flag_catalog.check(task.engine.name, f"{where}.{name}", canonical, names[name], asked_engine=True)
            if canonical in profile.managed:
                raise TaskError(f"{where}.{name}: the tuner sets this flag itself for each trial")
            if canonical in seen:
                raise TaskError(f"{where}.{name}: the same flag as {where}.{seen[canonical]} ({task.engine.name} "
                                f"--{canonical}); give it once")
            seen[canonical] = name


def checked_conflicts(task: Task) -> list[str]:
    """Flag values the engine refuses together (cluster/flag_rules.py): refused here when every
    config has them (no trial could start), else said: such configs are skipped, not deployed.
    Those refused on some GPUs only are said."""
    profile = profile_for(task.engine.name)
    fixed = {profile.canonical(name): value for name, value in task.engine.args.items()}
    space = {profile.canonical(name): domain for name, domain in task.search_space.items()}

    def where(flags: tuple[str, ...]) -> str:
        return "search_space" if set(flags) & set(space) else "engine.args"

    found = flag_rules.possible_conflicts(task.engine.name, fixed, space)
    for flags, words, always in found:
        if always:
            raise TaskError(f"{where(flags)}: every config {words}")
    notes = [f"search_space: some configs are skipped as infeasible, not deployed: one {words}"
             for _, words, _ in found]
    # Refused on some GPUs only: run (on others they start), and said.
    notes += [f"{where(flags)}: {'every config' if always else 'a config'} {words}"
              for flags, words, always in flag_rules.possible_conflicts(task.engine.name, fixed, space,
                                                                        flag_rules.ON_SOME_GPUS)]
    return notes


def _catalog_notes(task: Task, profile: EngineProfile) -> list[str]:
    """Names and values autotuner's catalog does not know, for an engine that could not be asked."""
    return [note for where, names in (("engine.args", task.engine.args), ("search_space", task.search_space))
            for name, domain in names.items()
            for note in flag_catalog.check(task.engine.name, f"{where}.{name}", profile.canonical(name), domain,
                                           asked_engine=False)]


def _check_resource_flag(profile: EngineProfile, canonical: str, where: str, domain: Any) -> None:
    """A flag the trial's claim is computed from (GPUs: tp x dp x pp; CPUs: llama.cpp's threads)
    takes whole numbers, GPU counts of at least 1: else the claim could not be made, after Ray started."""
    gpus = canonical in profile.gpu_flags
    if not gpus and canonical != profile.cpu_flag:
        return
    for value in given_values(domain):
        if not isinstance(value, int) or isinstance(value, bool) or (gpus and value < 1):
            what = "a GPU count: a whole number of at least 1" if gpus else "a whole number of threads"
            raise TaskError(f"{where}: {value!r} is not {what}")


def check_known_flags(task: Task, executable: str | None = None) -> bool:
    """A flag the engine's binary does not know, or a value outside the few its help says a flag
    takes, stops every trial given it at start: refused before the run (the binary's own help,
    where it can be asked here), naming the nearest one. `executable`: the binary the trials will
    run, else the one installed here (validate). Whether the flags could be checked."""
    if task.deployment.backend != "local":
        return False  # the engine is the cluster's image, maybe another version than any installed here
    profile = profile_for(task.engine.name)
    known = profile.known_flags(task.engine, executable)
    if known is None:
        return False
    for where, names in (("engine.args", task.engine.args), ("search_space", task.search_space)):
        for name, domain in names.items():
            flag = f"--{profile.canonical(name)}"
            if flag not in known.names:
                raise TaskError(f"{where}.{name}: {task.engine.name} has no {flag} (its --help){_nearest(flag, known.names)}")
            if flag in known.choices:
                _check_choices(f"{where}.{name}", domain, known.choices[flag], f"{task.engine.name}'s {flag}")
    return True


def _check_choices(where: str, domain: Any, allowed: tuple[str, ...], whose: str) -> None:
    """Each value a flag can be given is one its help lists (ranges are numbers: not checked here).
    Case aside: an engine may lower-case a value before it compares."""
    values = [] if isinstance(domain, (IntRange, FloatRange)) else given_values(domain)
    folded = {word.casefold() for word in allowed}
    for value in values:
        if value is None or isinstance(value, bool):  # the engine's default; booleans are spelled by the profile
            continue
        if str(value).casefold() not in folded and not _same_number(value, allowed):
            raise TaskError(f"{where}: {value!r} is not a value {whose} takes (its --help: "
                            f"{', '.join(allowed)}){_nearest(str(value), allowed, quoted=True)}")


def _same_number(value: Any, allowed: tuple[str, ...]) -> bool:
    """A number equal to a listed one (an engine that reads its value as a float takes 1 for 1.0)."""
    if not isinstance(value, (int, float)):
        return False
    for word in allowed:
        try:
            if float(word) == value:
                return True
        except ValueError:
            continue
    return False


def _nearest(word: str, known: Iterable[str], quoted: bool = False) -> str:
    near = difflib.get_close_matches(word, sorted(known), n=1) or [w for w in sorted(known) if w.startswith(word)][:1]
    return f"; did you mean {near[0]!r}?" if near and quoted else f"; did you mean {near[0]}?" if near else ""


def resolve(task: Task, backend: Backend, storage: Storage, run_id: str, *, local_ray: bool = True) -> Resolved:
    """Find (or build) the engine binary, the model and the tokenizer once, before any trial.

    With a local Ray, the binary found is proven here; on a cluster each node proves its own
    (`prepare_nodes`), as the driver's host may not run trials at all."""
    setup = backend.setup(profile_for(task.engine.name), task, prove_here=local_ray)
    return Resolved(**dataclasses.asdict(setup), storage=storage, run_id=run_id, run_host=records.host_id())


def prepare_nodes(task: Task, backend: Backend, resolved: Resolved, local_ray: bool, unfit: set[str]) -> Resolved:
    """On a Ray cluster, each node checked for genai-bench, the engine and the files trials read,
    and its engine binary proven on that node where the engine needs it; not the driver's own node
    when it is one (checked in `resolve`), nor the `unfit` ones no trial fits. The check goes with
    the trials: one placed on a node not checked here (one that joined later) runs it there first."""
    here = {ray.get_runtime_context().get_node_id()} if local_ray else set()
    engine_check = backend.node_check(profile_for(task.engine.name), task, resolved.model_path)
    storage, marker = resolved.storage, reachable_marker(resolved.run_id)
    storage.write_text(storage.path(marker), resolved.run_id)  # removed by the run's sweep
    load_generator = ("genai_bench",) if task.benchmark.runner == "direct" else ()  # runs beside each trial
    tokenizer = (("the tokenizer", resolved.tokenizer),) if load_generator and os.path.exists(resolved.tokenizer) else ()
    check = dataclasses.replace(engine_check, modules=engine_check.modules + load_generator,
                                files=engine_check.files + tokenizer, storage=storage, storage_marker=marker)
    found = check_nodes(check, here | unfit)
    binaries = {node: binary for node, binary in found.items() if binary}
    if binaries and local_ray:
        binaries |= {node: resolved.executable for node in here}
    return dataclasses.replace(resolved, node_check=check, checked_nodes=frozenset(found) | here,
                               node_executables=binaries)


def reachable_marker(run_id: str) -> str:
    """The file, in the storage, by which a node shows it sees the driver's storage."""
    return f".reachable-{run_id}"


def trial_resources(task: Task, node_cpus: int, nodes: list[dict[str, float]]):
    def placement(config: dict[str, Any]) -> tune.PlacementGroupFactory:
        claim = trial_claim(task, trial_params(config), node_cpus)
        # A config no node can hold would wait for a place forever: it holds next to nothing and
        # its trial reports that it does not fit (TrialTrainable), so the searcher learns it.
        return tune.PlacementGroupFactory([{"CPU": 0.01} if shortfall(claim, nodes) else claim])

    return placement


def capacity(available: dict[str, float], claim: dict[str, float]) -> int:
    fits = [math.floor(available.get(kind, 0) / need) for kind, need in claim.items() if need > 0]
    return max(1, min(fits, default=1))


@contextlib.contextmanager
def shipped_package() -> Iterator[str]:
    """A folder holding the whole llm_autotuner package, for Ray to ship to the workers (runtime_env
    py_modules; Ray uploads it during ray.init). An editable install keeps the subpackages outside
    the package's own folder, so they are gathered here."""
    import llm_autotuner

    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    with tempfile.TemporaryDirectory(prefix="autotuner-ship-") as tmp:
        package = Path(tmp) / "llm_autotuner"
        shutil.copytree(Path(llm_autotuner.__file__).parent, package, ignore=skip)
        for name in ("tuner", "trainables", "cluster", "templates"):
            module = importlib.import_module(f"llm_autotuner.{name}")
            if not (package / name).exists():
                shutil.copytree(Path(module.__file__).parent, package / name, ignore=skip)
        yield str(package)


def start_ray(backend: Backend, address: str | None, dashboard: bool = True) -> str | None:
    """Start a local Ray (with its dashboard unless told not to) or join the cluster at `address`;
    return the dashboard's URL (None when there is none)."""
    offers = backend.offers()
    url = None
    if not ray.is_initialized():
        if address:  # (cluster_address: --address, else RAY_ADDRESS)
            # Trials on other nodes need our package; the engines and genai-bench must be installed there.
            with shipped_package() as package:
                # Workers' own output stays in their logs (the dashboard shows them), as with a local Ray.
                try:
                    context = ray.init(address=address, runtime_env={"py_modules": [package]},
                                       configure_logging=False, log_to_driver=False)
                except (ConnectionError, TimeoutError, RuntimeError, ValueError) as error:
                    raise TaskError(f"--address: cannot join a Ray cluster at {address} "
                                    f"({' '.join(str(error).split())[:300]})") from None
        else:
            # Ray starts workers at niceness 15: any other work on the machine then starves the
            # trials' own processes (measured: 40 s to start a trial actor next to two busy loops).
            # The local Ray is ours, so its workers run at normal priority; engines and genai-bench
            # are reset to 0 wherever they run (cluster/procs.py).
            os.environ.setdefault("RAY_worker_niceness", "0")
            # The dashboard listens on the loopback only: from elsewhere, through an SSH tunnel.
            # "local": a Ray of our own even when a `ray start` cluster runs on this machine (with no
            # address, ray.init joins the one /tmp/ray/ray_current_cluster names, and refuses our
            # resources there); joining a cluster is what --address is for.
            with ray_in_own_session():  # a SIGTERM to our process group is ours to act on, not the GCS's
                context = ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                                   configure_logging=False, log_to_driver=False, resources=offers or None,
                                   _system_config=next_worker.PRELOAD)  # a trial's actor starts at once
        url = context.dashboard_url or None
    for kind, needed in offers.items():
        have = ray.cluster_resources().get(kind, 0)
        if have < needed:
            raise TaskError(f"deployment: the Ray cluster offers {have:g} '{kind}' but the task needs {needed:g}; "
                            f"start the Ray head with --resources '{{\"{kind}\": {needed:g}}}'")
    return url if url is None or "://" in url else f"http://{url}"


def dashboard_line(url: str) -> str:
    """Where to watch the run. The token is never printed: it is a credential for the cluster."""
    sign_in = (", signing in with the token `ray get-auth-token` prints"
               if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else "")
    return f"[autotuner] Ray dashboard: {url} (one actor per trial, named after its task, number and config{sign_in})"


def prepare_results_dir(task: Task, storage: Storage) -> tuple[Path, str | None]:
    """A fresh results/<task>/ (and <storage>/<task>/ when the storage is elsewhere); an earlier
    run's folder is moved aside, never overwritten. Returns the results folder, and where the
    earlier run's storage folder went (None: nowhere)."""
    path = task.results_path.absolute()
    earlier = None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if path.exists() and any(path.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
        aside = path.with_name(f"{path.name}.{stamp}")
        path.rename(aside)
        print(f"[autotuner] the previous run's results were moved to {aside}")
    if storage.root != str(path):
        earlier = move_aside(storage, stamp)
        if earlier:
            print(f"[autotuner] the previous run's trial files were moved to {storage.uri}.{stamp}")
    path.mkdir(parents=True, exist_ok=True)
    return path, earlier


def run(task: Task, *, address: str | None = None, resume: bool = False, dashboard: bool = True,
        live: bool = False, verbose: bool = False) -> dict:
    """Tune `task` (or continue its interrupted run); return the results summary, also written to
    results/<task>/. `live`: progress as a panel redrawn in place (a terminal), else a line per
    event; `verbose`: Ray Tune's own warnings too."""
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    # Bad input fails here, before anything is changed or started.
    address = cluster_address(address)
    notes = preflight(task)
    # A local run checks its flags against the engine it finds (resolve); which configs it skips is said anyway.
    for note in notes if task.deployment.backend != "local" else checked_conflicts(task):
        print(f"[autotuner] note: {note}", flush=True)
    local_ray = address is None
    backend = backend_for(task.deployment)
    storage = storage_for(task)
    resolved = resolve(task, backend, storage, run_id, local_ray=local_ray)
    if local_ray:
        check_known_flags(task, resolved.executable)
    try:
        with records.exclusive([str(task.results_path.absolute()), storage.uri], run_id):
            return _run_alone(task, backend, storage, resolved, run_id, address, resume, local_ray, dashboard,
                              live, verbose)
    except records.InUse as error:
        raise TaskError(f"{task.name}: {error}") from None


def _run_alone(task: Task, backend: Backend, storage: Storage, resolved: Resolved, run_id: str,
               address: str | None, resume: bool, local_ray: bool, dashboard: bool, live: bool,
               verbose: bool) -> dict:
    if resume:
        results_dir = task.results_path.absolute()
        if not storage.exists(storage.path(RAY_EXPERIMENT_NAME, "tuner.pkl")):
            raise TaskError(f"--resume: no earlier run of {task.name} in {storage.where(RAY_EXPERIMENT_NAME)}")
        if not registry.can_resume(registry.searcher_class(task.search.algorithm)):
            # Ray would restore the run without the searcher's state and then wait for it forever.
            raise TaskError(f"--resume: search.algorithm {task.search.algorithm} has no save/restore, so its "
                            f"state was not kept; run again without --resume")
    else:
        results_dir, earlier = prepare_results_dir(task, storage)
        resolved = dataclasses.replace(resolved, earlier_storage=earlier)
    registration = records.register_run(run_id, task.name)
    try:
        # The run's liveness for every host (OME: a Lease its objects belong to), released last.
        with backend.hold(task.name, run_id):
            # Engines an earlier run of this task left (its driver was killed, say) would take CPUs or
            # GPUs from the trials and distort their measurements.
            for line in backend.cleanup(task.name):
                print(f"[autotuner] removed {line}")
            try:
                return _tune(task, backend, resolved, results_dir, address, resume, local_ray, dashboard, live,
                             verbose)
            finally:
                registration.unlink(missing_ok=True)
                sweep(task, backend, resolved)
    finally:
        registration.unlink(missing_ok=True)  # when the hold itself failed


def _confirm(task: Task, trainable, resolved: Resolved, results_dir: Path, trials: list, max_concurrent: int,
             interrupt: Interrupt, live: bool = False) -> tuple[list[results_io.TrialRecord] | None, str | None]:
    """Noise control: re-measure the finalists (the best configs, and the baseline so the gain
    compares configs measured alike) at full length, so the winner is chosen on several runs
    rather than on one lucky one. They run in turns (A B C, B C A, C A B), not back to back: the
    machine drifts by several percent over minutes (docs/benchmarks.md), and back to back one config
    would get a good spell to itself; each turn starts one further on, so that no config always
    runs first, or right after the same other one. Returns the runs; `results_io.summarize` chooses the winner on them.
    Meanwhile results.json holds the search's trials and the runs finished so far (a second Ctrl-C
    ends the run without the final write). Also returns why the confirmation was stopped (None:
    it was not), as the search's failure guard words it."""
    finalists = results_io.finalists(task, trials)
    if not finalists:
        return None, None  # none to re-measure: not an interrupted confirmation
    experiment_dir = resolved.storage.where(RAY_EXPERIMENT_NAME)
    searched = results_io.summarize(task, resolved, trials, experiment_dir) | {"in_progress": True}
    results_io.write(results_dir, searched)
    def config(record: results_io.TrialRecord) -> dict:
        return dict(record.parameters) | ({BASELINE_KEY: True} if record.baseline else {})

    configs = [config(r) for turn in range(task.search.confirm_repeats) for r in rotated(finalists, turn)]
    names = ", ".join("the engine defaults" if r.baseline else f"experiment {r.experiment_id}" for r in finalists)
    print(f"[autotuner] confirming the best configs: {names}; {task.search.confirm_repeats} more full runs each, "
          f"in turns", flush=True)
    progress = progress_display(task, len(configs), live, label="confirm",
                                names={config_text(config(r)): f"experiment {r.experiment_id}" for r in finalists})
    # A failed run counts against its config, so no streak of them stops the confirmation; a run
    # that finds the setup broken does, as in the search: stranded by a lost node (it would wait
    # for ever), its worker lost twice, an engine that fails whatever its flags, a bad new node.
    guard = FailureGuard(limit=len(configs) + 1, label="confirm")
    tuner = tune.Tuner(
        trainable, param_space=to_ray(task.search_space),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=len(configs),
                                    search_alg=GridSearcher(points=configs), scheduler=FIFOScheduler(),
                                    max_concurrent_trials=max_concurrent, reuse_actors=False),
        run_config=tune.RunConfig(name=CONFIRM_EXPERIMENT_NAME, **resolved.storage.ray_storage(),
                                  failure_config=RUN_AGAIN_ONCE, verbose=0,
                                  checkpoint_config=NO_TRIAL_CHECKPOINTS, stop=RunEnd(resolved.storage, guard),
                                  callbacks=[progress, results_io.LiveResults(task, resolved, results_dir,
                                                                              experiment_dir, trials), guard]),
    )
    with closing(progress):
        runs = results_io.from_result_grid(tuner.fit())
    stopped_because = guard.reason
    for run in runs:
        # A run the stop cut between stages measured nothing for or against its config.
        run.ended = not (interrupt.requested or stopped_because) or bool(run.last.get("outcome"))
    return runs, stopped_because


def rotated(items: list, turn: int) -> list:
    """`items` starting at `turn` (modulo their number): turn 0 A B C, turn 1 B C A, turn 2 C A B."""
    start = turn % len(items)
    return items[start:] + items[:start]


def sweep(task: Task, backend: Backend, resolved: Resolved) -> None:
    """Remove whatever this run left behind, once it is over, and what other, dead runs of the
    task left. Local engines also have watchdogs; this is the backstop. Signals meanwhile do not
    cut it short, and a step that fails does not skip the next (nor hide how the run ended)."""
    storage = resolved.storage

    def engines() -> None:
        # This run's own first, waiting for them to go: the cleanup of dead runs that follows counts
        # this run as dead too (its lock is gone), and would kill its engines without that wait.
        for line in backend.settle(resolved.run_id) + backend.cleanup(task.name):
            print(f"[autotuner] {line}")

    # A trial whose worker was killed mid-benchmark could not scrub its genai-bench files: done
    # first, as the cleanup after it talks to a cluster that may not answer.
    steps = ([("scrubbing secrets from the trials' files", lambda: scrub_folder(Path(storage.path("trials"))))]
             if storage.direct else [])

    def markers() -> None:
        # This run's, and any a killed earlier session of the task left (no other run of the task is
        # alive: records.exclusive).
        for name in storage.listdir(storage.path()):
            if name.startswith(reachable_marker("")):
                storage.filesystem.delete_file(storage.path(name))

    steps += [("removing engines", engines), ("gathering the trials' files", lambda: gather_files(resolved, [])),
              ("removing the storage check's file", markers)]
    with signals_noted():
        for what, step in steps:
            try:
                step()
            except Exception as error:
                said = str(error).strip().splitlines()
                print(f"[autotuner] warning: {what} failed: {said[0] if said else repr(error)} "
                      "(`autotuner cleanup TASK_FILE` removes what is left)", flush=True)


def gather_files(resolved: Resolved, runs: list[results_io.TrialRecord]) -> None:
    """After a phase: the files its trials left on their nodes (those Ray cut off before they
    uploaded them) uploaded, and each trial's attempt filed under its name (cluster/storage.py)."""
    storage = resolved.storage
    if storage.direct:
        return
    try:
        for line in everywhere(collect_here, storage, resolved.run_id, resolved.earlier_storage):
            print(f"[autotuner] {line}")
        assemble(storage, {run.trial_id: run.last["files"] for run in runs if run.last.get("files")})
        if resolved.earlier_storage:  # what an earlier run's trials left, filed in that run's folder
            assemble(dataclasses.replace(storage, root=resolved.earlier_storage), {})
    except (OSError, SetupError) as error:  # the results come first: say so, do not fail the run
        print(f"[autotuner] warning: not every trial's files reached {storage.uri} yet "
              f"(the next run or --resume files them): {str(error).splitlines()[0]}")


def settle(backend: Backend, run_id: str) -> None:
    """After a phase (the search, the confirmation runs): make sure none of its engines is left
    before anything else starts. Ray gives a phase's last trials 10 s to stop when the phase ends,
    which can cut a teardown short (an InferenceService waiting out its pods' grace period)."""
    for line in backend.settle(run_id):
        print(f"[autotuner] {line}")


def progress_display(task: Task, budget: int, live: bool, label: str = "trial",
                     names: dict[str, str] | None = None) -> ProgressPrinter:
    if live:
        return LiveProgress(task.objective.metric, len(task.benchmark.concurrency), budget,
                            maximize(task.objective.metric), label, task.benchmark.max_requests_per_stage, names)
    return ProgressPrinter(task.objective.metric, len(task.benchmark.concurrency), label,
                           task.benchmark.max_requests_per_stage, names)


def _tune(task: Task, backend: Backend, resolved: Resolved, results_dir: Path, address: str | None, resume: bool,
          local_ray: bool, dashboard: bool, live: bool, verbose: bool) -> dict:
    with signals_deferred("Ray has started"):
        url = start_ray(backend, address, dashboard)
    if url:
        print(dashboard_line(url), flush=True)
    if not local_ray:  # the run's start swept only this host: now every node of the cluster
        for line in backend.cleanup(task.name):
            print(f"[autotuner] removed {line}")
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(QuietLostWorkers())
    logging.getLogger("ray.tune.execution.experiment_state").addFilter(BriefSyncFailures())
    if not verbose:  # Ray Tune's own warnings ("The process_trial_result operation took 0.5 s", ...)
        logging.getLogger("ray.tune").setLevel(logging.ERROR)
        # and its experiment box and TensorBoard hint, which its new output engine prints whatever
        # the verbosity: the legacy one prints nothing at verbose=0.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # SIGTERM (a batch scheduler, `kill`, a pod shutting down) is handled like Ctrl-C. Set after
    # ray.init, whose own handler would end the process on the spot.
    interrupt = Interrupt(resolved.storage)
    interrupt.install()
    alive = [node for node in ray.nodes() if node["Alive"]]
    nodes = [node["Resources"] for node in alive]
    node_cpus = max((int(node.get("CPU", 0)) for node in nodes), default=os.cpu_count() or 1)
    smallest = trial_claim(task, cheapest_params(task), node_cpus)
    too_big = shortfall(smallest, nodes)
    if too_big:
        raise TaskError(f"search_space: even its smallest config {too_big}; no trial could run")
    # A node no trial fits (a head started with no CPUs, a CPU node of a GPU task) need not have what trials need.
    unfit = {node["NodeID"] for node in alive if shortfall(smallest, [node["Resources"]])}
    resolved = prepare_nodes(task, backend, resolved, local_ray, unfit)
    for line in backend.prepare(resolved.served_name):
        print(f"[autotuner] {line}")
    available = ray.cluster_resources()
    # Each trial checks that its own config fits before it deploys anything.
    resolved = dataclasses.replace(resolved, node_cpus=node_cpus, nodes=tuple(nodes))
    max_concurrent = task.search.max_concurrent or capacity(available, smallest)
    trainable = tune.with_resources(tune.with_parameters(TrialTrainable, task=task, resolved=resolved),
                                    trial_resources(task, node_cpus, nodes))
    trials = num_trials(task)
    searcher, scheduler = build_searcher(task, max_concurrent), build_scheduler(task)
    guard = FailureGuard(task.search.max_consecutive_failures)
    patience = [NoImprovementStopper(task.search.patience)] if task.search.patience else []
    budget = [TimeoutStopper(task.search.time_budget_s)] if task.search.time_budget_s else []
    run_end = RunEnd(resolved.storage, guard, *patience, *budget)
    ends = TrialEnds()
    progress = progress_display(task, trials, live)
    storage = resolved.storage
    live_results = results_io.LiveResults(task, resolved, results_dir, storage.where(RAY_EXPERIMENT_NAME))
    # The experiment state is saved at most this often; a run killed between two saves would run
    # its last finished trials again on --resume. Writing it is cheap at our trial counts.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    callbacks = [progress, live_results, ends, guard, *patience]
    if resume:
        # Ray restores the searcher's and the scheduler's state and the run config. The filesystem
        # again: Ray would otherwise take the path for a local one (tuner_internal.py).
        tuner = tune.Tuner.restore(storage.path(RAY_EXPERIMENT_NAME), trainable, resume_unfinished=True,
                                   restart_errored=True, param_space=to_ray(task.search_space),
                                   storage_filesystem=storage.ray_filesystem)
        # The restored run config holds unpickled copies of the first session's callbacks, which
        # `_finish` never sees (TrialEnds, the live results): ours replace them. Ray 2.60 offers no
        # public way to (tuner_internal.py). Ray puts the saved RunEnd back (its time budget what is
        # left of it), holding this session's stoppers: tuner/session.py.
        internal = tuner._local_tuner
        internal._run_config = dataclasses.replace(internal.get_run_config(), callbacks=callbacks,
                                                   stop=run_end)
        print(f"[autotuner] {task.name}: resuming {storage.where(RAY_EXPERIMENT_NAME)}", flush=True)
        with closing(progress):
            grid = tuner.fit()
        return _finish(task, backend, resolved, results_dir, grid, trainable, max_concurrent, guard, interrupt, ends,
                       live)
    tuner = tune.Tuner(
        trainable,
        param_space=to_ray(task.search_space),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=trials, search_alg=searcher, scheduler=scheduler,
            max_concurrent_trials=max_concurrent,
            reuse_actors=False,  # teardown in cleanup() before the resources are free: see TrialTrainable
        ),
        run_config=tune.RunConfig(
            name=RAY_EXPERIMENT_NAME, **storage.ray_storage(),
            # Trials upload their own files (cluster/storage.py): Ray's copy of their working
            # directory would mix a retried attempt's files with the killed one's.
            sync_config=tune.SyncConfig(sync_artifacts=False),
            failure_config=RUN_AGAIN_ONCE,
            checkpoint_config=NO_TRIAL_CHECKPOINTS,
            callbacks=callbacks,
            stop=run_end,  # the time budget too: its end must reach the waiting trials
            verbose=0,
        ),
    )
    print(f"[autotuner] {task.name}: {trials} trials of {task.engine.name}, up to {max_concurrent} at once, "
          f"{len(task.benchmark.concurrency)} stages each (concurrency {task.benchmark.concurrency})", flush=True)
    # On Ctrl-C Ray stops the trials and returns what it has.
    with closing(progress):
        grid = tuner.fit()
    return _finish(task, backend, resolved, results_dir, grid, trainable, max_concurrent, guard, interrupt, ends, live)


def _finish(task: Task, backend: Backend, resolved: Resolved, results_dir: Path, grid, trainable, max_concurrent: int,
            guard: FailureGuard | None, interrupt: Interrupt, ends: TrialEnds, live: bool) -> dict:
    storage = resolved.storage
    # Trials Ray saved as TERMINATED or ERROR have ended (those a killed earlier session left
    # RUNNING have not), except the ones an interrupt of this session cut off.
    if interrupt.requested:
        analysis = tune.ExperimentAnalysis(storage.path(RAY_EXPERIMENT_NAME), storage_filesystem=storage.ray_filesystem)
        ended = {trial.trial_id for trial in analysis.trials
                 if trial.status in ("TERMINATED", "ERROR")} - ends.cut
        trials = results_io.from_result_grid(grid, ended)
    else:
        # No signal: every trial has ended; those the run's end cut off (running, or created and
        # never started) were stopped by its budget (time, patience, the guard).
        trials = results_io.from_result_grid(grid, cut_by_run=ends.cut)
    for trial in trials:
        if interrupt.requested and not trial.reports:
            trial.ended = False  # created but never run: the interrupt, not the search, left it out
    stopped_because = guard.reason if guard else None
    setup_failure = bool(guard and guard.setup_failure)
    if not (interrupt.requested or stopped_because):
        settle(backend, resolved.run_id)  # the search's last engines are gone before the confirmation runs
        interrupt.clear_run_end()  # the time budget or patience left the stop for the search's trials only
    gather_files(resolved, trials)  # (the confirmation runs' files: in the sweep, after their engines are gone)
    confirmations = None
    if not (interrupt.requested or stopped_because):
        confirmations, stopped_because = _confirm(task, trainable, resolved, results_dir, trials, max_concurrent,
                                                  interrupt, live)
        setup_failure = stopped_because is not None  # only a broken setup stops it (see _confirm)
    summary = results_io.summarize(task, resolved, trials, storage.where(RAY_EXPERIMENT_NAME), confirmations)
    summary["interrupted"] = summary["interrupted"] or interrupt.requested is not None
    summary["stopped_because"] = stopped_because
    summary["setup_failure"] = setup_failure
    results_io.write(results_dir, summary)
    export_winner(task, resolved, results_dir, summary)
    try:
        write_report(results_dir)
    except Exception as error:  # a view of results already written: never the run's failure
        print(f"[autotuner] warning: the report (index.html) could not be drawn: {error!r}; "
              f"`autotuner report {results_dir}` draws it again", flush=True)
    return summary


def export_winner(task: Task, resolved: Resolved, results_dir: Path, summary: dict) -> None:
    """The winner as its backend deploys it for good (OME: best_inferenceservice.yaml); none left
    from an earlier run when there is no winner."""
    best = summary["best_result"]
    files = winner_files(task, resolved.served_name, resolved.executable, resolved.model_path,
                         best["parameters"]) if best else {}
    for name in results_io.WINNER_MANIFESTS:
        if name not in files:
            (results_dir / name).unlink(missing_ok=True)
    for name, text in files.items():
        (results_dir / name).write_text(text)
