"""Does our portable llama-server build cost speed? Quick-start throughput of several binaries, in turns.

Each binary serves SmolLM2-135M with the same flags (the quick start's fixed ones plus
`--parallel 8 --threads 2`, the region where the quick start's winners lie) and runs the quick
start's three stages (D(100,64), concurrency 1, 4, 8, 16 requests each) through `autotuner run`.
The binaries take turns (A B A B ...), so a drift of the machine hits all of them alike; the
table gives each one's mean output throughput and its ratio to the first.

    .venv/bin/python benchmarks/build_flags.py ours=PATH native-no-amx=PATH [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def measure(binary: str, root: Path, run: int) -> float:
    name = f"build-{run}"
    task = {
        "name": name,
        "model": {"path": "builtin:smollm2", "name": "smollm2-135m"},
        "engine": {"name": "llama.cpp", "binary": binary, "args": {"ctx-size": 4096}},
        "search_space": {"parallel": [8], "threads": [2]},
        "benchmark": {"traffic_scenario": "D(100,64)", "concurrency": [1, 4, 8], "max_requests_per_stage": 16},
        "search": {"algorithm": "grid", "scheduler": "none", "baseline": False, "confirm_repeats": 0},
        "results_dir": str(root),
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task))
    subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path)], check=True, stdout=subprocess.DEVNULL)
    [trial] = json.loads((root / name / "results.json").read_text())["all_results"]
    return trial["objective_score"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("binaries", nargs="+", help="NAME=PATH of each llama-server to compare")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    binaries = dict(item.split("=", 1) for item in args.binaries)
    root = Path(tempfile.mkdtemp(prefix="autotuner-build-flags-"))
    print(f"runs in {root} (kept: remove it when done)", flush=True)
    runs: dict[str, list[float]] = {name: [] for name in binaries}
    count = 0
    for _ in range(args.rounds):
        for name, binary in binaries.items():
            count += 1
            runs[name].append(measure(binary, root, count))
            print(f"{name}: {runs[name][-1]:.1f} tok/s", flush=True)
    first = statistics.mean(next(iter(runs.values())))
    print("\n| build | output tok/s per run | mean | vs. first |\n|---|---|---|---|")
    for name, values in runs.items():
        mean = statistics.mean(values)
        print(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {mean:.1f} | {mean / first:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
