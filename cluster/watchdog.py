"""Kill an engine's process group when the process that started it dies, however it dies.

Ray may end a trial's worker before its `finally` finishes (ASHA stop, Ctrl-C), and a SIGKILL of
the driver takes the raylet with it; neither kills an engine started in its own session. The
worker starts this module with a pipe on stdin and keeps the write end, before the engine; the
engine writes its PID into the pipe before it execs. The module forks once more (so Ray's cleanup
of a worker's direct children does not reach it), reads the PID, waits for EOF on the pipe (the
worker closed it or died) and then kills the engine's group.

    python -m llm_autotuner.cluster.watchdog    (stdin: the pipe)
"""

from __future__ import annotations

import os
import sys

from llm_autotuner.cluster.procs import kill_group, start_time


def main() -> int:
    if os.fork() > 0:
        os._exit(0)  # the intermediate exits; the grandchild is adopted by init
    os.setsid()
    named = sys.stdin.buffer.readline()
    if not named:
        return 0  # the owner closed the pipe before any engine started
    pgid = int(named)
    started = start_time(pgid)  # the engine named itself a moment ago (exec keeps PID and start time)
    if started is None:
        return 0
    while sys.stdin.buffer.read(4096):
        pass  # nothing more is written; EOF means the worker is gone or done with the engine
    kill_group(pgid, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
