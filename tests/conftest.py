"""Shared fixtures: the real CPU engine (llama-server + SmolLM2), prepared by `make test`."""

from pathlib import Path

import pytest

from cluster import llamacpp_setup


@pytest.fixture(scope="session")
def llama_server() -> str:
    return str(llamacpp_setup.ensure_llama_server())


@pytest.fixture(scope="session")
def smollm2() -> str:
    return str(llamacpp_setup.smollm2_gguf())


@pytest.fixture(scope="session")
def tokenizer(smollm2) -> str:
    return str(llamacpp_setup.ensure_tokenizer(Path(smollm2)))


def engine_processes(marker: str) -> set[int]:
    """PIDs of running llama-server processes whose argv holds `marker` (a unique served name)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if argv[0].endswith("llama-server") and marker in argv:
                pids.add(int(proc.name))
    return pids
