"""How well the tuner runs trials side by side, and whether the driver keeps up with many trials.

(a) Parallel efficiency: N trials on K slots (K = 1, 2, 4, 8), each a whole `autotuner run
    --address` on a Ray test cluster whose head offers 2K CPUs (a trial claims 2: its engine's
    thread and genai-bench). The engine is benchmarks/instant_engine.py, which answers at once,
    so a trial's time is the tuner's own: Ray placing it and starting its actor, the engine's
    start and health check, genai-bench, the teardown. Efficiency at K = (N/K x t1) / span(K),
    where t1 is the mean trial time at K = 1 and span the time from the first trial's start to
    the last one's end (each trial's timeline.json). Goal: >= 0.9 at every K. On a machine with
    fewer cores than K x (genai-bench + engine), the machine, not the tuner, caps it: the table
    says how many cores it had.
(b) Driver scale: `--scale-trials` (default 500) one-stage trials on 8 slots; the driver's memory
    (RSS of the `autotuner run` process; its children are not counted) and the time per trial over
    each fifth of the run, read every 5 s as the run goes. Goal: flat as the count grows.

    .venv/bin/python benchmarks/parallel_efficiency.py [--slots 1 2 4 8] [--trials-per-run 16]
        [--scale-trials 500] [--skip-scale] [--trace-memory | --native-profile] [--keep DIR] [--preload]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import fmean

import yaml
from ray.cluster_utils import Cluster

from instant_engine import launcher
from llm_autotuner.trainables.next_worker import PRELOAD

CPUS_PER_TRIAL = 2  # threads 1 + benchmark.client_cpus 1


def task(name: str, root: Path, binary: str, trials: int, stages: list[int]) -> dict:
    return {
        "name": name,
        "model": {"path": "builtin:smollm2", "name": "instant"},
        "engine": {"name": "llama.cpp", "binary": binary, "args": {"threads": 1}},
        "search_space": {"parallel": [1, 2, 3, 4, 5, 6, 7, 8]},
        "benchmark": {"traffic_scenario": "D(32,16)", "concurrency": stages, "max_requests_per_stage": 4},
        "search": {"algorithm": "random", "seed": 1, "num_samples": trials, "scheduler": "none",
                   "baseline": False, "confirm_repeats": 0, "max_consecutive_failures": trials},
        "results_dir": str(root),
    }


class Head:
    """A Ray test cluster of one node offering `cpus` CPUs, in its own temp folder; `preload`: its
    workers import the trial's module as they start, as the local Ray the driver starts does
    (trainables/next_worker.py: PRELOAD; on a real cluster, `ray start --head --system-config`)."""

    def __init__(self, cpus: int, preload: bool = False):
        self.temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
        os.makedirs("/tmp/ray", exist_ok=True)
        try:
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": cpus, "temp_dir": self.temp_dir, "include_dashboard": False,
                **({"_system_config": PRELOAD} if preload else {})})
        except BaseException:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            raise

    def __enter__(self) -> str:
        return self.cluster.address

    def __exit__(self, *exc) -> None:
        try:
            self.cluster.shutdown()
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def run(root: Path, name: str, binary: str, slots: int, trials: int, stages: list[int],
        watch=None, trace_memory: bool = False, native_profile: bool = False, preload: bool = False) -> dict:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task(name, root, binary, trials, stages)))
    command = ["-m", "llm_autotuner.tuner.cli"]
    if trace_memory:  # the driver under tracemalloc, its growth from 2 minutes in to the end in memory.txt
        command = [str(Path(__file__).with_name("traced_driver.py")), str(root / name / "memory.txt"), "120"]
    elif native_profile:  # every allocation, native ones included, still live at the driver's exit
        command = ["-m", "memray", "run", "--native", "--aggregate", "--quiet", "--force",
                   "-o", str(root / f"{name}-driver.memray"), *command]
    with Head(CPUS_PER_TRIAL * slots, preload) as address:
        began = time.time()
        driver = subprocess.Popen([sys.executable, *command, "run", str(path), "--address", address],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            samples = watch(driver, root / name) if watch else None
            code = driver.wait()
        finally:
            # (Ctrl-C, an error, the caller's timeout): the driver ends its run, its engines torn down,
            # before the cluster under it is shut down.
            if driver.poll() is None:
                driver.send_signal(signal.SIGINT)
                try:
                    driver.wait(120)
                except subprocess.TimeoutExpired:
                    driver.kill()
                    driver.wait()
        if code != 0:
            raise SystemExit(f"{name}: autotuner run exited with {code}")
        wall = time.time() - began
    marks = [json.loads(p.read_text()) for p in (root / name / "trials").glob("*/timeline.json")]
    durations = [m["trial_end"] - m["trial_start"] for m in marks]
    return {"wall_s": wall, "trials": len(marks), "mean_trial_s": fmean(durations),
            "span_s": max(m["trial_end"] for m in marks) - min(m["trial_start"] for m in marks),
            "samples": samples}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def watch_driver(driver: subprocess.Popen, results: Path) -> list[dict]:
    """Every 5 s: trials finished so far (their timelines with an end) and the driver's RSS, each
    sample also appended to <run>-samples.jsonl in the benchmark folder as it comes: a benchmark cut
    short (a timeout, a lost session) keeps what it saw."""
    samples, began = [], time.time()
    log = (results.parent / f"{results.name}-samples.jsonl").open("a", buffering=1)
    with log:
        while driver.poll() is None:
            try:
                done = sum("trial_end" in p.read_text() for p in (results / "trials").glob("*/timeline.json"))
                sample = {"t": time.time() - began, "done": done, "rss_mb": rss_mb(driver.pid)}
            except (OSError, ValueError):
                sample = None
            if sample:
                samples.append(sample)
                log.write(json.dumps(sample) + "\n")
            time.sleep(5)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, nargs="*", default=[1, 2, 4, 8],
                        help="the K of the efficiency runs; none (`--slots` alone) runs only the driver scale")
    parser.add_argument("--trials-per-run", type=int, default=16)
    parser.add_argument("--scale-trials", type=int, default=500)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--trace-memory", action="store_true",
                        help="run the scale's driver under tracemalloc (slower): what grows, in scale/memory.txt")
    parser.add_argument("--native-profile", action="store_true",
                        help="run the scale's driver under memray --native (pip install memray): "
                             "scale-driver.memray, read by benchmarks/native_growth.py")
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--preload", action="store_true",
                        help="the test cluster's workers import the trial's module as they start")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="autotuner-parallel-"))
    root.mkdir(parents=True, exist_ok=True)
    binary = str(launcher(root / "instant-engine", delay_s=0.02))
    print(f"results in {root}; machine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}", flush=True)

    runs = {}
    for slots in args.slots:
        runs[slots] = run(root, f"k{slots}", binary, slots, args.trials_per_run, [1, 2], preload=args.preload)
        print(f"K={slots}: {runs[slots]['trials']} trials, span {runs[slots]['span_s']:.1f} s, "
              f"mean trial {runs[slots]['mean_trial_s']:.1f} s", flush=True)
    t1 = runs[min(runs)]["mean_trial_s"] if runs else 0.0
    if runs:
        print("\n| slots K | trials N | mean trial | span | ideal N/K x t1 | efficiency | whole run |")
        print("|---|---|---|---|---|---|---|")
    for slots, r in runs.items():
        ideal = r["trials"] / slots * t1
        print(f"| {slots} | {r['trials']} | {r['mean_trial_s']:.1f} s | {r['span_s']:.1f} s | {ideal:.1f} s | "
              f"{ideal / r['span_s']:.2f} | {r['wall_s']:.1f} s |")

    if not args.skip_scale:
        scale = run(root, "scale", binary, 8, args.scale_trials, [1], watch=watch_driver,
                    trace_memory=args.trace_memory, native_profile=args.native_profile)
        print(f"\nscale: {scale['trials']} trials in {scale['wall_s'] / 60:.1f} min")
        print("| trials done | driver RSS | time per trial over the last block |")
        print("|---|---|---|")
        step = max(1, args.scale_trials // 5)  # five blocks; the last sample may come just short of N
        marks, previous = list(range(step, args.scale_trials - step // 2, step)) + [args.scale_trials - 4], (0.0, 0)
        for mark in marks:
            sample = next((s for s in scale["samples"] if s["done"] >= mark), None)
            if sample:
                per_trial = (sample["t"] - previous[0]) / max(1, sample["done"] - previous[1])
                print(f"| {sample['done']} | {sample['rss_mb']:.0f} MB | {per_trial:.2f} s |")
                previous = (sample["t"], sample["done"])
        runs["scale"] = scale
    (root / "summary.json").write_text(json.dumps({str(k): v for k, v in runs.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
