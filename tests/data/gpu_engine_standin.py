#!/usr/bin/env python3
"""A stand-in for a GPU engine's launcher (`vllm serve ...`) on a machine without GPUs: it logs
what the engine would have been given, then serves the model through llama-server.

    gpu_engine_standin.py serve MODEL --host H --port P --served-model-name N [--flag value]...
    (env: REAL_LLAMA_SERVER; STANDIN_LOG: file to append to)

Each start and exit is one JSON line: time, pid, the GPUs it was given (CUDA_VISIBLE_DEVICES),
the raylet of the Ray node that started it (RAY_RAYLET_PID: one per node), its flags. The
flags are vLLM's; llama-server gets a fixed small config (one thread, two slots).
`launcher(...)` writes an executable that runs it with the real server's path baked in.
"""

import json
import os
import signal
import subprocess
import sys
import time


def launcher(path, real_llama_server: str, log_path) -> str:
    path.write_text(f"#!{sys.executable}\nimport os, sys\n"
                    f"os.environ['REAL_LLAMA_SERVER'] = {real_llama_server!r}\n"
                    f"os.environ['STANDIN_LOG'] = {str(log_path)!r}\n"
                    f"os.execv(sys.executable, [sys.executable, {os.path.abspath(__file__)!r}, *sys.argv[1:]])\n")
    path.chmod(0o755)
    return str(path)


def log(event: str, **fields) -> None:
    line = {"event": event, "time": time.time(), "pid": os.getpid(), **fields}
    with open(os.environ["STANDIN_LOG"], "a") as out:
        out.write(json.dumps(line) + "\n")


def main() -> int:
    if any(arg.startswith("--help") for arg in sys.argv[1:]):
        return 2  # lists no flags: `validate` passes the task's through unchecked (cluster/engines.py)
    command, model, *rest = sys.argv[1:]
    assert command == "serve", sys.argv
    flags = dict(zip(rest[::2], rest[1::2]))
    log("start", gpus=os.environ.get("CUDA_VISIBLE_DEVICES"), raylet=os.environ.get("RAY_RAYLET_PID"),
        flags=flags)
    # The teardown's SIGTERM reaches the whole group (the server too); this exits once it has.
    signal.signal(signal.SIGTERM, lambda *_: None)  # the server, once exec'd, has the default again
    server = subprocess.Popen([os.environ["REAL_LLAMA_SERVER"], "--model", model, "--host", flags["--host"],
                               "--port", flags["--port"], "--alias", flags["--served-model-name"],
                               "--ctx-size", "1024", "--parallel", "2", "--threads", "1"])
    code = server.wait()
    log("exit")
    return code


if __name__ == "__main__":
    sys.exit(main())
