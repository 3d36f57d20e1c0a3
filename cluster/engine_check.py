"""Prove a `llama-server` binary on this machine: start it on a small model and get one completion.

A binary that looks right can still die at its first instruction the CPU cannot run (a build for
another CPU, or this llama.cpp version's AMX path), so nothing is trusted until it answered here.
The check takes 1-3 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from llm_autotuner.cluster.local import PORT_TAKEN_WORDS, free_port
from llm_autotuner.cluster.procs import ProcessGroup, exit_hint, exit_text, telling_line
from llm_autotuner.errors import SetupError

CHECK_TIMEOUT_S = 120.0  # model load plus one short completion, on a busy machine
HELP_TIMEOUT_S = 30.0  # `--help` prints at once; this is for a machine under load
_POLL_S = 0.1
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EngineCheckFailed(SetupError):
    """The binary died before it served a completion; the message says how it ended."""


# The check asks without credentials: an API key the user gave the engine would refuse it.
_CREDENTIALS = ("LLAMA_API_KEY", "LLAMA_ARG_API_KEY", "LLAMA_ARG_API_KEY_FILE")


def check_llama_server(binary: str | Path, model: str | Path, timeout_s: float = CHECK_TIMEOUT_S) -> float:
    """Start `binary` serving `model`, ask for a completion, stop it; the seconds it took.

    Raises EngineCheckFailed naming the signal or exit code (and what it means) when it dies;
    SetupError when it never answers within `timeout_s`.
    """
    started = time.monotonic()
    for _ in range(3):  # the port chosen may be taken before the server binds it
        with tempfile.TemporaryDirectory(prefix="autotuner-check-") as tmp:
            log = Path(tmp) / "engine.log"
            port = free_port()
            argv = [str(binary), "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
                    "--ctx-size", "256", "--parallel", "1", "--alias", "autotuner-check"]
            try:
                env = {key: value for key, value in os.environ.items() if key not in _CREDENTIALS}
                group = ProcessGroup(argv, log_path=str(log), env=env)
            except OSError as error:
                raise EngineCheckFailed(f"{binary} cannot be started: {error.strerror}") from None
            try:
                if _serve_one(group, f"http://127.0.0.1:{port}", started + timeout_s, timeout_s):
                    return time.monotonic() - started
            finally:
                group.stop(grace_s=2.0)
    raise EngineCheckFailed(f"{binary} could not bind a free port in 3 attempts")


def _serve_one(group: ProcessGroup, base: str, deadline: float, timeout_s: float) -> bool:
    """True once a completion came back; False when the port was taken; raises on failure."""
    while True:
        code = group.poll()
        if code is not None:
            tail = group.log_tail()
            if code > 0 and any(words in tail.lower() for words in PORT_TAKEN_WORDS):
                return False
            hint = exit_hint(code, group.argv[0]) or telling_line(tail)
            raise EngineCheckFailed(f"{group.argv[0]} {exit_text(code)} at start: {hint}")
        if time.monotonic() >= deadline:
            # Alive but silent: a loaded machine more likely than a bad build, so not a reason to
            # try another build.
            raise SetupError(f"{group.argv[0]} gave no completion within {timeout_s:.0f} s: "
                                    f"{telling_line(group.log_tail())}")
        if _completion(base):
            return True
        time.sleep(_POLL_S)


def _completion(base: str) -> bool:
    body = json.dumps({"prompt": "The capital of France is", "n_predict": 2}).encode()
    request = urllib.request.Request(base + "/completion", data=body, headers={"Content-Type": "application/json"})
    try:
        with _DIRECT.open(request, timeout=30) as response:
            answer = json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, json.JSONDecodeError):
        return False  # not listening yet, or still loading (503)
    return isinstance(answer.get("content"), str) and answer.get("tokens_predicted", 0) >= 1


def listed_flags(*help_argvs: list[str]) -> frozenset[str] | None:
    """Every flag spelling an engine's help lists (llama-server's "-c,    --ctx-size N", argparse's
    "--tp-size TP_SIZE, --tensor-parallel-size TP_SIZE"), over all of `help_argvs` that answer (one
    help may show a part: vLLM 0.9's `--help=all` only the flags whose names hold "all", 0.10's
    `--help` a summary), or None when none could say (then nothing is refused on its word)."""
    names: set[str] = set()
    for argv in help_argvs:
        try:
            shown = subprocess.run(argv, capture_output=True, text=True, timeout=HELP_TIMEOUT_S,
                                   stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if shown.returncode == 0:
            names.update(name for line in shown.stdout.splitlines() for name in _line_flags(line))
    return frozenset(names) or None


def _line_flags(line: str) -> list[str]:
    """The spellings a help line starts with. Its columns are 2+ spaces apart: the spellings, each
    maybe with its value's name ("--a A [A ...], --b A [A ...]"), then the description; a column
    ending in "," is followed by more spellings (llama-server pads between them)."""
    names = []
    for column in re.split(r"\s{2,}", line.strip()):
        tokens = column.split()
        if not tokens or not tokens[0].startswith("-"):
            break
        names += [token.rstrip(",").split("=", 1)[0] for token in tokens if token.startswith("-")]
        if not column.endswith(","):
            break
    return names
