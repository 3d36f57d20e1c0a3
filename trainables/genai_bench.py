"""Benchmark runner: genai-bench as a subprocess, one invocation per trial for all stages.

Importing genai_bench monkey-patches the process with gevent, which hangs Ray, so it only ever
runs as a child process. It writes one JSON file per (scenario, concurrency) as soon as that run
ends; we watch for them and yield each stage's metrics at once, so the trial can report it and
ASHA can stop the trial before the next stage.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from llm_autotuner.cluster.deployer import Endpoint
from llm_autotuner.cluster.procs import ProcessGroup
from llm_autotuner.errors import BenchmarkError
from llm_autotuner.metrics import METRICS
from llm_autotuner.secrets import api_key, scrub_folder
from llm_autotuner.task import Benchmark
from llm_autotuner.trainables.timed_genai_bench import ARGS_FROM_STDIN, REQUEST_LOG_ENV
from llm_autotuner.trainables.warmup import warm_up

POLL_S = 0.25
STARTUP_ALLOWANCE_S = 120.0  # genai-bench imports transformers, pandas and locust before stage 1
# Users started per second. genai-bench's default (the concurrency) starts a stage's users over its
# first second, time in which the engine is not at the stage's load but which the window counts.
SPAWN_RATE = 1000
FIXED_LENGTH_BACKENDS = {"sglang", "vllm"}  # genai-bench sends ignore_eos: every answer as long as asked
_STAGE_FILE = re.compile(r"_num_concurrency_(\d+)_time_[\d.]+s\.json$")


@dataclass(frozen=True)
class Stage:
    index: int  # 1-based; the trial reports it as ASHA's time attribute
    concurrency: int
    scenario: str


def stages(benchmark: Benchmark) -> list[Stage]:
    return [Stage(i, c, benchmark.traffic_scenario) for i, c in enumerate(benchmark.concurrency, 1)]


def parse_stage_file(path: Path, request_limits: dict[str, float] | None = None,
                     requests: list[dict] | None = None, fixed_length: bool = False) -> dict:
    """One genai-bench result file -> our stage metrics (seconds, tokens/s, our own error rate).

    Throughputs are the completed requests' tokens over the stage's window: first request sent to
    last answer, failed requests included (a config that fails requests slowly pays for their
    time). `requests` are the stage's lines of our request log (trainables/timed_genai_bench.py),
    which time every request; without them (a BenchmarkJob's genai-bench) the window is
    genai-bench's run duration, which ends at its next once-a-second check (up to a second long).
    Not the sum of the requests' times over the concurrency (Little's law): a stage is too short
    for a steady state, and its first requests wait less than the later ones while those in flight
    when genai-bench ends the stage are dropped, so where requests queue in the engine (fewer slots
    than the concurrency) that time put the throughput 22-23% above the window on 16 requests at
    concurrency 8 (benchmarks/throughput_window.py, docs/benchmarks.md). genai-bench's own figures
    (over its run duration) are kept as `*_genai_bench`. `goodput` counts, per second of the same
    window, the completed requests whose own latencies met every limit in `request_limits`
    (per-request field -> seconds, from the SLOs).
    `truncated_fraction`: the completed requests answered with fewer output tokens than they asked
    for; known only when the backend asks for answers of fixed length (`fixed_length`: sglang and
    vllm send ignore_eos), else None.
    """
    data = json.loads(path.read_text())
    aggregated = data["aggregated_metrics"]
    stats = aggregated["stats"]
    requests_made = aggregated.get("num_requests") or 0
    errors = aggregated.get("num_error_requests") or 0
    concurrency = aggregated["num_concurrency"]
    done = [r for r in data.get("individual_request_metrics") or []
            if not r.get("error_code") and r.get("e2e_latency")]
    if requests:
        window_s = max(r["done"] for r in requests) - min(r["sent"] for r in requests)
    else:
        window_s = aggregated.get("run_duration") or 0.0
    metrics = {
        "concurrency": concurrency,
        "duration_s": aggregated.get("run_duration"),
        "timed": "every request" if requests else "genai-bench's run duration",
        "window_s": window_s,
        "output_throughput": sum(r["num_output_tokens"] for r in done) / window_s if window_s else 0.0,
        "total_throughput": sum(r["total_tokens"] for r in done) / window_s if window_s else 0.0,
        "requests_per_second": len(done) / window_s if window_s else 0.0,
        "goodput": _good(done, request_limits or {}) / window_s if window_s else 0.0,
        "output_throughput_genai_bench": aggregated["mean_output_throughput_tokens_per_s"],
        "total_throughput_genai_bench": aggregated["mean_total_tokens_throughput_tokens_per_s"],
        "requests_per_second_genai_bench": aggregated["requests_per_second"],
        "num_requests": requests_made,
        "num_completed_requests": aggregated.get("num_completed_requests"),
        "num_errors": errors,
        # genai-bench's own error_rate is always 0 (0.0.5); compute it.
        "error_rate": errors / requests_made if requests_made else 1.0,
        "truncated_fraction": _truncated(requests) if fixed_length and requests else None,
    }
    failed_s = [r["done"] - r["sent"] for r in requests or [] if r.get("status") != 200]
    failed_s += [0.0] * max(0, errors - len(failed_s))  # failures without a time of their own
    for name, metric in METRICS.items():
        if metric.request_field:  # a latency statistic: ttft_p90 is the p90 of the requests' ttft
            stat = name.rpartition("_")[2]
            metrics[name] = stats[metric.request_field][stat]
            if failed_s and metric.request_field in WAITED_FIELDS:
                metrics[name] = _with_failures([r[metric.request_field] for r in done if r.get(metric.request_field) is not None],
                                               failed_s, stat)
    return metrics


# genai-bench leaves failed requests out of its latency statistics, so a config that times out
# its slowest requests (within the error-rate limit) would show the better tail. For the latencies
# a client waits through per request, a failed request counts as slower than every answered one:
# its time to fail or the slowest answer's, whichever is longer (a lower bound on a wait that got
# no answer). Per-token latencies (tpot, itl) have no value for a request that failed.
WAITED_FIELDS = ("ttft", "e2e_latency")


def _with_failures(answered: list[float], failed_s: list[float], stat: str) -> float:
    slowest = max(answered, default=0.0)
    values = sorted(answered + [max(seconds, slowest) for seconds in failed_s])
    if stat == "mean":
        return sum(values) / len(values)
    return _percentile(values, float(stat[1:]))


def _percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default, as genai-bench uses)."""
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _truncated(requests: list[dict]) -> float | None:
    answered = [r for r in requests if r["status"] == 200 and r.get("wanted_tokens") and
                r.get("output_tokens") is not None]
    if not answered:
        return None
    return sum(r["output_tokens"] < r["wanted_tokens"] for r in answered) / len(answered)


def read_request_log(path: Path | None, concurrency: int) -> list[dict]:
    """The stage's lines of our request log (all written before genai-bench writes the stage's file)."""
    if path is None or not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [line for line in lines if line.get("concurrency") == concurrency]


def _good(requests: list[dict], limits: dict[str, float]) -> int:
    return sum(all((r.get(field) if r.get(field) is not None else float("inf")) <= limit
                   for field, limit in limits.items()) for r in requests)


def genai_bench_argv() -> list[str]:
    """genai-bench, run through our request log (trainables/timed_genai_bench.py)."""
    if importlib.util.find_spec("genai_bench") is None:  # found, not imported: importing it patches gevent in
        raise BenchmarkError("genai-bench is not installed: pip install genai-bench")
    return [sys.executable, "-m", "llm_autotuner.trainables.timed_genai_bench"]


class GenaiBenchRunner:
    def __init__(self, benchmark: Benchmark, tokenizer: str, api_backend: str,
                 request_limits: dict[str, float] | None = None):
        self.benchmark = benchmark
        self.request_limits = request_limits or {}
        self.tokenizer = tokenizer
        self.api_backend = api_backend
        self._waiting: ProcessGroup | None = None  # started early, waiting for its arguments

    @contextlib.contextmanager
    def started_early(self, workdir: Path) -> Iterator[None]:
        """Start genai-bench now, before the engine: its Python imports (3-4 s of one core, a
        trial's largest fixed cost: docs/benchmarks.md) then overlap the engine's start and warm-up
        instead of following them. `run` hands it its arguments; killed on leaving the block if
        `run` did not take it (the engine never came up)."""
        self._waiting = self._genai_bench(workdir)
        try:
            yield
        finally:
            waiting, self._waiting = self._waiting, None
            if waiting is not None:
                _stopped(waiting, workdir)

    def _genai_bench(self, workdir: Path) -> ProcessGroup:
        """genai-bench, importing itself, then waiting for its arguments on stdin."""
        out_dir = workdir / "genai-bench"
        out_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "ENABLE_UI": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "MPLCONFIGDIR": str(out_dir / "mpl"), REQUEST_LOG_ENV: str(out_dir / "requests.jsonl")}
        # The key goes through genai-bench's environment, not its argv: a command line is visible
        # to every user of the machine (ps) and gets logged. Only ours: it is the one we scrub.
        env.pop("MODEL_API_KEY", None)
        if api_key():
            env["MODEL_API_KEY"] = api_key()
        return ProcessGroup([*genai_bench_argv(), ARGS_FROM_STDIN], log_path=str(workdir / "genai-bench.log"),
                            env=env, cwd=str(out_dir), stdin=subprocess.PIPE)

    def arguments(self, base_url: str, model_name: str, out_dir: Path) -> list[str]:
        """genai-bench's command line, less the program."""
        argv = ["benchmark", "--api-backend", self.api_backend,
                "--api-base", base_url, "--api-key", "none",  # the real one: MODEL_API_KEY
                "--api-model-name", model_name, "--model-tokenizer", self.tokenizer,
                "--task", "text-to-text", "--traffic-scenario", self.benchmark.traffic_scenario]
        for concurrency in self.benchmark.concurrency:
            argv += ["--num-concurrency", str(concurrency)]
        return argv + ["--max-time-per-run", str(self.benchmark.max_minutes_per_stage),
                       "--max-requests-per-run", str(self.benchmark.max_requests_per_stage),
                       "--spawn-rate", str(SPAWN_RATE),
                       "--experiment-base-dir", str(out_dir), "--experiment-folder-name", "run",
                       "--log-dir", str(out_dir / "logs")]

    @contextlib.contextmanager
    def run(self, endpoint: Endpoint, model_name: str, workdir: Path) -> Iterator[Iterator[tuple[Stage, dict]]]:
        """Warm the engine up, start genai-bench's stages (genai-bench itself started by
        `started_early`, else now, as the warm-up begins); yield an iterator of (stage, metrics) as
        each stage finishes. genai-bench is killed on leaving the block, whether or not every stage ran."""
        group, self._waiting = self._waiting or self._genai_bench(workdir), None
        out_dir = workdir / "genai-bench"
        try:
            warm_up(endpoint.url, model_name, self.benchmark, self.api_backend, out_dir / "warmup.json",
                    api_key(), endpoint.failure)
            arguments = json.dumps(self.arguments(endpoint.url, model_name, out_dir))
            with contextlib.suppress(BrokenPipeError):  # it died: said below, from its exit code and log
                group.process.stdin.write(arguments.encode() + b"\n")
                group.process.stdin.close()
            yield watch_stages(self.benchmark, out_dir / "run",
                               lambda: endpoint.failure() or _nothing_finished(group) or _exit_reason(group),
                               STARTUP_ALLOWANCE_S, self.request_limits, out_dir / "requests.jsonl",
                               fixed_length=self.api_backend in FIXED_LENGTH_BACKENDS)
        finally:
            _stopped(group, workdir)


def _stopped(group: ProcessGroup, workdir: Path) -> None:
    group.stop(grace_s=0)  # its result files are complete; nothing to shut down cleanly
    scrub_folder(workdir)  # genai-bench.log and everything under genai-bench/


def watch_stages(benchmark: Benchmark, run_dir: Path, failure: Callable[[], str | None],
                 startup_s: float, request_limits: dict[str, float], request_log: Path | None = None,
                 fixed_length: bool = False) -> Iterator[tuple[Stage, dict]]:
    """Yield (stage, metrics) as each stage's result file appears under `run_dir`.

    `failure()` says why the load generator ended early (None while it runs); each stage has a
    deadline, the first one `startup_s` longer.
    """
    deadline = time.monotonic() + startup_s + benchmark.stage_timeout_s
    for stage in stages(benchmark):
        yield stage, _wait_for_stage(run_dir, stage, failure, deadline,
                                     lambda path: parse_stage_file(path, request_limits,
                                                                   read_request_log(request_log, stage.concurrency),
                                                                   fixed_length))
        deadline = time.monotonic() + benchmark.stage_timeout_s


def _wait_for_stage(run_dir: Path, stage: Stage, failure: Callable[[], str | None], deadline: float,
                    parse: Callable[[Path], dict]) -> dict:
    while True:
        ended = failure()  # asked before the file, so a file written just before the end counts
        metrics = _read_stage(run_dir, stage.concurrency, parse)
        if metrics is not None:
            return metrics
        if ended is not None:
            raise BenchmarkError(f"{ended} before stage {stage.index} (concurrency {stage.concurrency}) finished")
        if time.monotonic() >= deadline:
            raise BenchmarkError(f"stage {stage.index} (concurrency {stage.concurrency}) gave no "
                                 "result before its deadline (benchmark.stage_timeout_s)")
        time.sleep(POLL_S)


NOTHING_FINISHED = "no request finished within benchmark.max_minutes_per_stage: the engine is too slow for this load"


def _nothing_finished(group: ProcessGroup) -> str | None:
    """genai-bench's word that the stage it just ended finished no request. It then skips the
    stage's file and goes on with the next stages (minutes more, each as hopeless on an engine that
    slow): the stage fails now. Any such line is the current stage's, as an earlier one failed it."""
    if any("No request metrics collected" in line for line in group.log_tail(60).splitlines()):
        return f"genai-bench: {NOTHING_FINISHED}"
    return None


def _exit_reason(group: ProcessGroup) -> str | None:
    code = group.poll()
    return None if code is None else f"genai-bench exited with code {code} ({_reason(group)})"


def _read_stage(run_dir: Path, concurrency: int, parse: Callable[[Path], dict]) -> dict | None:
    """The stage's metrics once its file is complete; None while it is missing or half written."""
    path = _stage_file(run_dir, concurrency)
    if path is None:
        return None
    try:
        return parse(path)
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def _stage_file(run_dir: Path, concurrency: int) -> Path | None:
    if not run_dir.is_dir():
        return None
    for path in run_dir.rglob("*.json"):  # a BenchmarkJob nests its run folder one level down
        match = _STAGE_FILE.search(path.name)
        if match and int(match.group(1)) == concurrency:
            return path
    return None


def _reason(group: ProcessGroup) -> str:
    """The most telling line of genai-bench's log: its last error. Not procs.telling_line's first:
    genai-bench logs through rich, which prints "ERROR Uncaught exception" above a boxed traceback
    and ends with the exception, its message wrapped onto indented lines (joined back here)."""
    raw = group.log_tail(60).splitlines()
    lines = [line.strip() for line in raw if line.strip()]
    if any("No request metrics collected" in line for line in lines):
        # It then skips the stage's file and still exits 0.
        return NOTHING_FINISHED
    problems = [index for index, line in enumerate(raw) if line.strip().startswith(("ERROR", "CRITICAL"))
                or "Error:" in line or "Exception" in line]
    if not problems:
        return (lines[-1:] or ["no output"])[0][-300:]
    told = raw[problems[-1]]
    if not told[:1].isspace():
        return told.strip()[-300:]
    following = itertools.takewhile(lambda line: line[:1].isspace() and line.strip(), raw[problems[-1] + 1:])
    return " ".join(line.strip() for line in [told, *following])[:300]
