"""Warm-up: requests sent to a fresh engine before its first measured stage, and not measured.

A fresh engine's first requests pay for allocations, caches and lazily started workers; measured,
they would make stage 1 (low load) look slower than it is, and more so for some configs than
others. One wave at the highest concurrency touches every slot the stages will use.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

from llm_autotuner.errors import BenchmarkError
from llm_autotuner.task import Benchmark

# Requests go straight to the engine, never through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_NUMBERS = re.compile(r"[\d.]+")
POLL_S = 0.25  # how often the warm-up asks whether the engine still serves


def lengths(scenario: str) -> tuple[int, int]:
    """Typical (prompt, answer) token counts of a genai-bench text scenario (task.py checks the form):
    D(100,64) -> (100, 64); N(480,240)/(300,150) -> the means; U(50,200)/(20,100) -> the middles;
    U(200,100) (from 1 up to each maximum) -> (100, 50)."""
    numbers = [float(n) for n in _NUMBERS.findall(scenario)]
    kind = scenario[0]
    if kind == "U":
        low_in, high_in, low_out, high_out = numbers if len(numbers) == 4 else (1, numbers[0], 1, numbers[1])
        return int((low_in + high_in) / 2), int((low_out + high_out) / 2)
    if kind == "N":
        return int(numbers[0]), int(numbers[2])
    return int(numbers[0]), int(numbers[1])


def warm_up(base_url: str, model_name: str, benchmark: Benchmark, api_backend: str, record: Path,
            api_key: str | None = None, failure: Callable[[], str | None] = lambda: None) -> dict:
    """Send the warm-up requests (benchmark.warmup_requests, default the highest concurrency, all at
    once), wait for them within benchmark.stage_timeout_s, and write what happened to `record`.
    A failed warm-up request is not an error here: the stages measure whatever is wrong. But an
    engine that answered none of them by the deadline fails the trial now (BenchmarkError): with
    no more load than the last stage's, over longer than a stage lasts, its last stage would finish
    no request either, and the stages would take minutes to show it (seen: llama.cpp's polling
    threads on a busy 2-core machine, docs/benchmarks.md). `failure()`, asked while the requests
    run, says why the engine stopped serving (it crashed): the warm-up then ends at once."""
    count = max(benchmark.concurrency) if benchmark.warmup_requests is None else benchmark.warmup_requests
    prompt_tokens, answer_tokens = lengths(benchmark.traffic_scenario)
    body = {"model": model_name, "max_tokens": answer_tokens, "stream": False,
            # A word per token, roughly: the prompt is about as long as the scenario's.
            "messages": [{"role": "user", "content": " ".join(["hello"] * prompt_tokens)}]}
    if api_backend in ("sglang", "vllm"):
        body["ignore_eos"] = True  # as genai-bench asks: answers as long as the stages' will be
    started = time.monotonic()
    deadline = started + benchmark.stage_timeout_s
    statuses: list[int | str] = []
    if count:
        pool = ThreadPoolExecutor(max_workers=count)
        try:
            sent = [pool.submit(_send, base_url, body, api_key, deadline) for _ in range(count)]
            while wait(sent, timeout=POLL_S).not_done:
                ended = failure()
                if ended is not None:
                    raise BenchmarkError(f"{ended} (in the warm-up)")
            statuses = [request.result() for request in sent]
        finally:
            # Not waited for after a failure: the requests still out end with the engine's teardown
            # (their connections close) or at their deadline.
            pool.shutdown(wait=False, cancel_futures=True)
    summary = {"requests": count, "answered": statuses.count(200), "statuses": statuses,
               "started": started, "ended": time.monotonic()}
    record.write_text(json.dumps(summary, indent=2))
    hopeless = (count and not summary["answered"] and summary["ended"] >= deadline - 1
                and count <= max(benchmark.concurrency) and benchmark.stage_timeout_s >= 60 * benchmark.max_minutes_per_stage)
    if hopeless:
        raise BenchmarkError(f"warm-up: none of its {count} requests was answered within benchmark.stage_timeout_s "
                             f"({benchmark.stage_timeout_s:g} s): the engine is too slow for this load")
    return summary


def _send(base_url: str, body: dict, api_key: str | None, deadline: float) -> int | str:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    try:
        with _DIRECT.open(request, timeout=max(1.0, deadline - time.monotonic())) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError) as error:  # refused, reset, timed out
        return type(error).__name__
