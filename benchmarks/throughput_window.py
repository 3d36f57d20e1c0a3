"""How a stage's throughput should be computed: two estimators on short stages against a long one.

A stage is a few waves of requests; genai-bench stops it at its once-a-second check and kills what
is still in flight. Two ways to turn its requests into tokens/s:
  window: completed tokens / (last answer - first request sent), failed requests' time included;
  little: completed tokens / (sum of every request's duration / concurrency) (Little's law).
Each is measured on short stages (as the tuner runs them) and on one long stage, where the edges
weigh little; the estimator whose short-stage figure sits closer to the long one is less biased.
The tuner reports the window (trainables/genai_bench.py): with `--parallel` below the concurrency
(requests queue in the engine) Little's law put the short stages 22-23% above the window and
11-18% above a long stage (docs/benchmarks.md).

Usage: python benchmarks/throughput_window.py [--rounds 3] [--concurrency 4] [--short N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from llm_autotuner.cluster import llamacpp_setup
from llm_autotuner.cluster.deployer import EngineSpec
from llm_autotuner.cluster.engines import LLAMA_CPP
from llm_autotuner.cluster.local import LocalDeployer
from llm_autotuner.task import Benchmark
from llm_autotuner.trainables.genai_bench import GenaiBenchRunner, read_request_log


def stage(endpoint, tokenizer: str, concurrency: int, requests: int, workdir: Path) -> dict:
    benchmark = Benchmark(traffic_scenario="D(100,64)", concurrency=[concurrency], max_requests_per_stage=requests,
                          max_minutes_per_stage=1, warmup_requests=concurrency)
    runner = GenaiBenchRunner(benchmark, tokenizer, "sglang")
    with runner.run(endpoint, "smol", workdir) as stages:
        _, metrics = next(iter(stages))
    log = read_request_log(workdir / "genai-bench" / "requests.jsonl", concurrency)
    tokens = sum(r["output_tokens"] or 0 for r in log if r["status"] == 200)
    window = max(r["done"] for r in log) - min(r["sent"] for r in log)
    busy = sum(r["done"] - r["sent"] for r in log) / concurrency
    return {"window": tokens / window, "little": tokens / busy, "tuner": metrics["output_throughput"],
            "requests": len(log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--short", type=int, help="requests of a short stage (default: 4 x concurrency)")
    parser.add_argument("--parallel", type=int, help="the engine's slots (default: the concurrency); fewer "
                        "than the concurrency makes requests queue in the engine")
    args = parser.parse_args()
    server, model = llamacpp_setup.ensure_llama_server(), llamacpp_setup.smollm2_gguf()
    tokenizer = str(llamacpp_setup.ensure_tokenizer(model))
    with tempfile.TemporaryDirectory() as tmp:
        spec = EngineSpec("bench", "bench", "t", LLAMA_CPP, str(server), str(model), "smol",
                          {"ctx-size": 4096, "parallel": args.parallel or args.concurrency, "threads": 2}, Path(tmp) / "engine")
        short, long = [], []
        with LocalDeployer().deployed(spec, 60) as endpoint:
            for number in range(args.rounds):  # in turns, so drift hits both alike
                short.append(stage(endpoint, tokenizer, args.concurrency, args.short or 4 * args.concurrency,
                                   Path(tmp) / f"short{number}"))
                long.append(stage(endpoint, tokenizer, args.concurrency, 12 * args.concurrency,
                                  Path(tmp) / f"long{number}"))
    print(f"concurrency {args.concurrency}, parallel {args.parallel or args.concurrency}, {args.rounds} rounds; long stages sent "
          f"{statistics.mean(r['requests'] for r in long):.0f} requests, short {statistics.mean(r['requests'] for r in short):.0f}")
    print("| estimator | short stage tok/s | long stage tok/s | short / long |")
    print("|---|---|---|---|")
    for name in ("window", "little", "tuner"):
        s, lo = statistics.mean(r[name] for r in short), statistics.mean(r[name] for r in long)
        print(f"| {name} | {s:.1f} | {lo:.1f} | {s / lo:.3f} |")


if __name__ == "__main__":
    main()
