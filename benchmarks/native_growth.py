"""What the driver keeps per trial, native memory included: two memray captures compared.

    .venv/bin/python benchmarks/native_growth.py SMALL.memray N_SMALL LARGE.memray N_LARGE [--top 25]

Each capture is a whole driver run (`parallel_efficiency.py --slots --scale-trials N
--native-profile`: scale-driver.memray) of N trials. What a run leaves allocated at its exit is
mostly fixed (imports, Ray's core worker); what grows with N is what the driver keeps per trial.
So the leaked bytes of each allocation site are compared between a short and a long run, and the
sites are listed by their growth per extra trial, each with the frames that point at its owner.
Needs memray (`pip install memray`; not a dependency of the tuner).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from memray import FileReader

# Frames that say how memory was allocated, not who wanted it.
_ALLOCATOR_FRAMES = ("malloc", "calloc", "realloc", "operator new", "std::", "__gnu_cxx", "memray",
                     "_PyObject_", "PyMem_", "PyObject_Malloc", "PyObject_Realloc", "PyObject_Calloc",
                     "_PyMem_", "pymalloc", "arena", "new_allocator", "allocate")


def _owner_frames(record, depth: int) -> tuple[str, ...]:
    frames = []
    for function, filename, line in record.hybrid_stack_trace(max_stacks=40):
        if any(mark in function for mark in _ALLOCATOR_FRAMES):
            continue
        frames.append(f"{function} ({filename.rsplit('/', 1)[-1]}:{line})")
        if len(frames) == depth:
            break
    return tuple(frames) or ("<unknown>",)


def live_by_site(path: str, depth: int, at: str) -> dict[tuple[str, ...], tuple[int, int]]:
    """Bytes and blocks per site still allocated at the run's exit (`leaks`) or at its heap peak."""
    sites: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
    with FileReader(path) as reader:
        records = (reader.get_leaked_allocation_records(merge_threads=True) if at == "exit"
                   else reader.get_high_watermark_allocation_records(merge_threads=True))
        for record in records:
            site = sites[_owner_frames(record, depth)]
            site[0] += record.size
            site[1] += record.n_allocations
    return {key: (size, count) for key, (size, count) in sites.items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("small")
    parser.add_argument("n_small", type=int)
    parser.add_argument("large")
    parser.add_argument("n_large", type=int)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--depth", type=int, default=6, help="frames that name a site")
    parser.add_argument("--at", choices=["exit", "peak"], default="exit",
                        help="compare what is allocated at the driver's exit, or at its heap's peak")
    args = parser.parse_args()
    small = live_by_site(args.small, args.depth, args.at)
    large = live_by_site(args.large, args.depth, args.at)
    extra = args.n_large - args.n_small
    total_small = sum(size for size, _ in small.values())
    total_large = sum(size for size, _ in large.values())
    print(f"allocated at {args.at}: {total_small / 2**20:.1f} MiB after {args.n_small} trials, "
          f"{total_large / 2**20:.1f} MiB after {args.n_large}: "
          f"{(total_large - total_small) / extra / 1024:.0f} KiB per extra trial")
    growth = sorted(((large.get(key, (0, 0))[0] - small.get(key, (0, 0))[0],
                      large.get(key, (0, 0))[1] - small.get(key, (0, 0))[1], key)
                     for key in set(small) | set(large)), reverse=True)
    for size, count, key in growth[:args.top]:
        print(f"\n{size / extra / 1024:8.1f} KiB/trial {count / extra:+8.1f} blocks/trial")
        for frame in key:
            print(f"      {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
