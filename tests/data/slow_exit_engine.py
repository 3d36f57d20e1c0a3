#!/usr/bin/env python3
"""A llama-server that takes EXIT_DELAY_S to exit after SIGTERM, as a GPU engine freeing its memory
does, and logs its lifetime: `start`, `stopping` (SIGTERM came) and `exit` lines of TIME PID in
$ENGINE_LIFETIMES.

    slow_exit_engine.py [llama-server args...]   (env: REAL_LLAMA_SERVER, EXIT_DELAY_S: 8)

`launcher(...)` writes an executable that runs it with the real server's path baked in, to be
given as `engine.binary`.

The real server is its child, in its process group: the group's SIGTERM reaches both; the server
exits at once, this wrapper only after the delay. A SIGKILL (a sweep, not a teardown) leaves no
`exit` line.
"""

import os
import signal
import subprocess
import sys
import time

LOG = os.environ.get("ENGINE_LIFETIMES")
DELAY_S = float(os.environ.get("EXIT_DELAY_S", "8"))


def log(event: str) -> None:
    if LOG:
        with open(LOG, "a") as out:
            out.write(f"{event} {time.time():.3f} {os.getpid()}\n")


def launcher(path, real_llama_server: str, delay_s: float = 8.0):
    path.write_text(f"#!{sys.executable}\nimport os, sys\n"
                    f"os.environ['REAL_LLAMA_SERVER'] = {real_llama_server!r}\n"
                    f"os.environ.setdefault('EXIT_DELAY_S', {str(delay_s)!r})\n"
                    f"os.execv(sys.executable, [sys.executable, {os.path.abspath(__file__)!r}, *sys.argv[1:]])\n")
    path.chmod(0o755)
    return path


def main() -> int:
    log("start")
    server = subprocess.Popen([os.environ["REAL_LLAMA_SERVER"], *sys.argv[1:]])
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(time.monotonic()) or log("stopping"))
    while not stopping and server.poll() is None:
        time.sleep(0.05)
    if stopping:
        # The server got the group's SIGTERM too; however long it takes, this exits DELAY_S after it.
        try:
            server.wait(timeout=max(0.0, DELAY_S - (time.monotonic() - stopping[0])))
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        time.sleep(max(0.0, DELAY_S - (time.monotonic() - stopping[0])))
    log("exit")
    return server.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
