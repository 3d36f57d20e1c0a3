"""`autotuner run ...` under tracemalloc, to find what grows in the driver as trials accumulate.

    python benchmarks/traced_driver.py OUT.txt FIRST_S autotuner-arguments...

Takes a snapshot FIRST_S seconds in (the run's start-up done, some trials in) and another at the
end, and writes to OUT.txt the 25 source lines whose allocations grew the most between the two,
with the growth and the count of blocks. One frame per allocation: the overhead stays small, and
the line that allocates is what points at the owner (Ray Tune's trial objects, our summaries...).
"""

import sys
import threading
import time
import tracemalloc

from llm_autotuner.tuner import cli


def main() -> int:
    out, first_s, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    tracemalloc.start(1)
    first: list[tuple[float, tracemalloc.Snapshot]] = []
    began = time.monotonic()

    def snapshot_later() -> None:
        time.sleep(first_s)
        first.append((time.monotonic() - began, tracemalloc.take_snapshot()))

    threading.Thread(target=snapshot_later, daemon=True).start()
    try:
        return cli.main(argv)
    finally:
        end = tracemalloc.take_snapshot()
        with open(out, "w") as report:
            if not first:
                report.write("the run ended before the first snapshot\n")
            else:
                at, start = first[0]
                grown = end.compare_to(start, "lineno")[:25]
                total = sum(s.size_diff for s in end.compare_to(start, "filename"))
                report.write(f"traced allocations grew {total / 2**20:.1f} MiB from {at:.0f} s to the end "
                             f"({time.monotonic() - began:.0f} s); the 25 lines that grew most:\n")
                for stat in grown:
                    report.write(f"{stat.size_diff / 2**20:8.2f} MiB {stat.count_diff:+8d} blocks  {stat.traceback}\n")


if __name__ == "__main__":
    sys.exit(main())
