"""How llama-server's thread settings fare on a busy machine: the same 4 completions (32 tokens
each) with 2 threads (polling, llama.cpp's default), 2 threads without polling (--poll 0), and 1
thread, while busy loops take every core. Prints a markdown table row per setting.

    .venv/bin/python benchmarks/threads_under_load.py [--loops N] [--rounds R]

Why it matters here: the tests and the quick start run on 2-core machines that may be busy, and a
measurement that a neighbour's load inflates tenfold would mislead the tuner as much as the user.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import time
import urllib.request

from llm_autotuner.cluster import llamacpp_setup
from llm_autotuner.cluster.local import free_port

SETTINGS = {"2 threads (default polling)": ["--threads", "2"],
            "2 threads, --poll 0": ["--threads", "2", "--poll", "0"],
            "1 thread": ["--threads", "1"]}


def busy() -> None:
    while True:
        pass


def completions_s(binary: str, model: str, flags: list[str]) -> float:
    port = free_port()
    server = subprocess.Popen([binary, "--model", model, "--port", str(port), "--ctx-size", "1024", *flags],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        began = time.monotonic()
        for number in range(4):
            body = json.dumps({"prompt": f"Tell me a story about cat number {number}", "n_predict": 32}).encode()
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body),
                                   timeout=600).read()
        return time.monotonic() - began
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a starved server: not left holding its port and the CPU
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loops", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    binary, model = str(llamacpp_setup.ensure_llama_server()), str(llamacpp_setup.smollm2_gguf())
    idle = {name: completions_s(binary, model, flags) for name, flags in SETTINGS.items()}
    loops = [multiprocessing.Process(target=busy, daemon=True) for _ in range(args.loops)]
    for loop in loops:
        loop.start()
    try:
        # In turns, so a drift of the machine hits every setting alike.
        loaded: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for _ in range(args.rounds):
            for name, flags in SETTINGS.items():
                loaded[name].append(completions_s(binary, model, flags))
    finally:
        for loop in loops:
            loop.terminate()
    print(f"| setting | idle (s) | {args.loops} busy loops, median of {args.rounds} (s) | slowdown |")
    print("|---|---|---|---|")
    for name in SETTINGS:
        median = statistics.median(loaded[name])
        print(f"| {name} | {idle[name]:.2f} | {median:.2f} | {median / idle[name]:.1f}x |")


if __name__ == "__main__":
    main()
