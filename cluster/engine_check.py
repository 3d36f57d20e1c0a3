"""Prove a `llama-server` binary on this machine: start it on a small model and get one completion.

A binary that looks right can still die at its first instruction the CPU cannot run (a build for
another CPU, or this llama.cpp version's AMX path), so nothing is trusted until it answered here.
The check takes 1-3 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from llm_autotuner.cluster.local import PORT_TAKEN_WORDS, free_port
from llm_autotuner.cluster.procs import ProcessGroup, exit_hint, exit_text, telling_line
from llm_autotuner.errors import SetupError

CHECK_PREFIX = "autotuner-check-"  # then the checking process's PID: its folder in the temporary folder
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
    _remove_orphaned_checks()
    for _ in range(3):  # the port chosen may be taken before the server binds it
        with tempfile.TemporaryDirectory(prefix=f"{CHECK_PREFIX}{os.getpid()}-") as tmp:
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


def _remove_orphaned_checks() -> None:
    """Remove the folders of checks whose process is gone. A check's folder is removed by the
    process that made it, or never: a kill -9 mid-check (a Ray node removed while it checks its
    engine) left one in the temporary folder for good. Its name holds the PID that made it."""
    for folder in Path(tempfile.gettempdir()).glob(f"{CHECK_PREFIX}*-*"):
        pid = folder.name.removeprefix(CHECK_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)  # another user's: not ours to remove, and it stays


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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


@dataclass(frozen=True)
class FlagHelp:
    """What an engine's help says of its flags: every spelling, and for a flag whose help names the
    only values it takes (argparse's `{a,b}`, llama-server's `{a,b}` or "allowed values: a, b"),
    those values under each of its spellings."""

    names: frozenset[str]
    choices: dict[str, tuple[str, ...]]


def listed_flags(*help_argvs: list[str]) -> FlagHelp | None:
    """Every flag spelling an engine's help lists (llama-server's "-c,    --ctx-size N", argparse's
    "--tp-size TP_SIZE, --tensor-parallel-size TP_SIZE"), over all of `help_argvs` that answer (one
    help may show a part: vLLM 0.9's `--help=all` only the flags whose names hold "all", 0.10's
    `--help` a summary), or None when none could say (then nothing is refused on its word)."""
    names: set[str] = set()
    choices: dict[str, tuple[str, ...]] = {}
    for argv in help_argvs:
        try:
            shown = subprocess.run(argv, capture_output=True, text=True, timeout=HELP_TIMEOUT_S,
                                   stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if shown.returncode != 0:
            continue
        last: list[str] = []  # the spellings of the flag whose description lines follow
        for line in shown.stdout.splitlines():
            spellings = _line_flags(line)
            words = _line_choices(line) if spellings else _allowed_values(line) if last else ()
            if words:
                choices.update(dict.fromkeys(spellings or last, words))
            last = spellings or last
            names.update(spellings)
    return FlagHelp(frozenset(names), choices) if names else None


def _flag_columns(line: str) -> list[str]:
    """A help line's leading columns that hold flag spellings. Its columns are 2+ spaces apart: the
    spellings, each maybe with its value's name ("--a A [A ...], --b A [A ...]"), then the
    description; a column ending in "," is followed by more spellings (llama-server pads between them)."""
    columns = []
    for column in re.split(r"\s{2,}", line.strip()):
        if not column.split() or not column.startswith("-"):
            break
        columns.append(column)
        if not column.endswith(","):
            break
    return columns


def _line_flags(line: str) -> list[str]:
    """The spellings a help line starts with."""
    return [token.rstrip(",").split("=", 1)[0] for column in _flag_columns(line)
            for token in column.split() if token.startswith("-")]


_CHOICE_SET = re.compile(r"^\[?\{([^{}\s]+)\}")  # {a,b,c}, or [{a,b,c}] for an optional value


def _line_choices(line: str) -> tuple[str, ...]:
    """The values a help line's flag is limited to, where its value's name is a set of them. Not
    llama-server's `[on|off|auto]`: those flags also take other words (enabled, true, 1)."""
    for column in _flag_columns(line):
        for token in column.split():
            value_name = token.split("=", 1)[1] if token.startswith("-") and "=" in token else token
            if found := _CHOICE_SET.match(value_name):
                return tuple(found.group(1).split(","))
    return ()


def _allowed_values(line: str) -> tuple[str, ...]:
    """llama-server's description line "allowed values: f32, f16, q8_0" (its cache types)."""
    _, said, values = line.partition("allowed values:")
    return tuple(word.strip() for word in values.split(",") if word.strip()) if said else ()
