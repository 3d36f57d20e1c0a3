"""Kill an engine's process group when the process that started it dies, however it dies.

Ray may end a trial's worker before its `finally` finishes (ASHA stop, Ctrl-C), and a SIGKILL of
the driver takes the raylet with it; neither kills an engine started in its own session. The
worker starts this module with a pipe on stdin and keeps the write end. The module forks once
more (so Ray's cleanup of a worker's direct children does not reach it), waits for EOF on the
pipe (the worker closed it or died) and then kills the engine's group.

    python -m cluster.watchdog PGID START_TIME
"""

from __future__ import annotations

import os
import sys

from llm_autotuner.cluster.procs import kill_group


def main(argv: list[str]) -> int:
    pgid, started = int(argv[1]), int(argv[2]) or None
    if os.fork() > 0:
        os._exit(0)  # the intermediate exits; the grandchild is adopted by init
    os.setsid()
    while sys.stdin.buffer.read(4096):
        pass  # the worker never writes; EOF means it is gone or done with the engine
    kill_group(pgid, started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
