"""The CPU engine's setup: which build is chosen for a CPU, and no binary is used before it served a
completion on this machine. Fake binaries that die by SIGILL stand for a build this CPU cannot run;
the real llama-server (built by `make test`) stands for a good one."""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from llm_autotuner.cluster import llamacpp_build
from llm_autotuner.cluster.engine_check import EngineCheckFailed, check_llama_server
from llm_autotuner.cluster.llamacpp_setup import ensure_llama_server
from llm_autotuner.cluster.procs import exit_text
from llm_autotuner.errors import SetupError
from tests.conftest import engine_processes, instant_engine, until

pytestmark = pytest.mark.e2e

AMX_XEON = frozenset("sse4_2 avx f16c fma bmi2 avx2 avx_vnni avx512f avx512cd avx512vl avx512dq avx512bw "
                     "avx512vbmi avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_int8 amx_bf16".split())


def sigill_binary(path, marker=None):
    """A 'llama-server' that dies by SIGILL at start, as a build for another CPU does; it touches
    `marker` first, so a test can tell whether it was run at all."""
    touch = f"touch {marker}\n" if marker else ""
    path.write_text(f"#!/bin/sh\n{touch}kill -ILL $$\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """An empty cache, no user choice, no llama-server on PATH, and a build that fails at once
    (its source distribution is missing) instead of compiling for 5 minutes."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMA_SERVER", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv(llamacpp_build.SDIST_ENV, str(tmp_path / "no-such-sdist.tar.gz"))
    return tmp_path


def cache_build(config, binary_source, built_on_features, requires=None):
    config.folder.mkdir(parents=True)
    shutil.copy2(binary_source, config.binary)
    config.binary.chmod(0o755)
    (config.folder / "build.json").write_text(json.dumps({
        "requires": sorted(config.requires if requires is None else requires),
        "built_on": {"host": "other-node", "cpu_features": sorted(built_on_features)}}))


def test_no_build_for_an_amx_cpu_compiles_amx_in():
    configs = llamacpp_build.build_configs(AMX_XEON)
    assert [c.name for c in configs] == ["cpu", "portable"]
    for config in configs:
        options = dict(config.options)
        assert options["GGML_NATIVE"] == "OFF"  # -march=native would take AMX from the CPU
        assert all(options[name] == "OFF" for name in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"))
    cpu, portable = (dict(c.options) for c in configs)
    assert cpu["GGML_AVX512"] == cpu["GGML_AVX512_BF16"] == cpu["GGML_AVX512_VNNI"] == "ON"
    assert portable["GGML_AVX2"] == "ON" and portable["GGML_AVX512"] == "OFF"
    assert configs[0].key != configs[1].key


def test_a_cpu_without_avx512_gets_a_build_without_it():
    haswell = frozenset("sse4_2 avx f16c fma bmi2 avx2".split())
    cpu, portable = llamacpp_build.build_configs(haswell)
    assert dict(cpu.options)["GGML_AVX512"] == "OFF" and dict(cpu.options)["GGML_AVX2"] == "ON"
    assert cpu.requires <= haswell
    assert dict(portable.options)["GGML_AVX2"] == "OFF"  # the fallback is plain x86-64
    assert cpu.key != llamacpp_build.build_configs(AMX_XEON)[0].key


def test_a_signal_is_named_with_its_meaning():
    assert exit_text(-4) == "killed by SIGILL (illegal instruction)"
    assert exit_text(-11) == "killed by SIGSEGV (segmentation fault)"
    assert exit_text(-9) == "killed by SIGKILL"
    assert exit_text(3) == "exited with code 3"


def test_the_check_gets_a_completion_from_the_real_server(llama_server, smollm2):
    assert check_llama_server(llama_server, smollm2) < 60


def test_the_folder_of_a_check_killed_mid_way_goes_with_the_next_check(llama_server, smollm2, tmp_path, monkeypatch):
    # Seen: an autotuner-check-* folder left in /tmp for each check a kill -9 ended mid-way (most
    # likely a Ray node the cluster tests remove), some one a run of `make test`.
    engine = instant_engine(tmp_path / "never-answers", slots=False)
    code = f"from llm_autotuner.cluster.engine_check import check_llama_server; check_llama_server({str(engine)!r}, {smollm2!r})"
    checker = subprocess.Popen([sys.executable, "-c", code],
                               env={**os.environ, "TMPDIR": str(tmp_path), "INSTANT_ENGINE_CHECK_DELAY_S": "1000"})
    try:
        assert until(lambda: engine_processes("autotuner-check") and list(tmp_path.glob("autotuner-check-*")), 60)
    finally:
        checker.kill()
        checker.wait(timeout=30)
    [left] = tmp_path.glob("autotuner-check-*")
    assert left.name.startswith(f"autotuner-check-{checker.pid}-")
    mine = tmp_path / f"autotuner-check-{os.getpid()}-running"  # a check still going: kept
    mine.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    check_llama_server(llama_server, smollm2)
    assert list(tmp_path.glob("autotuner-check-*")) == [mine]  # the check's own went with it too


def test_the_check_names_sigill_and_what_it_means(tmp_path, smollm2):
    with pytest.raises(EngineCheckFailed) as caught:
        check_llama_server(sigill_binary(tmp_path / "llama-server"), smollm2)
    assert "killed by SIGILL (illegal instruction) at start" in str(caught.value)
    assert "this llama-server uses CPU instructions this machine cannot run" in str(caught.value)


def test_a_users_binary_that_dies_by_sigill_is_refused(own_cache, monkeypatch):
    binary = sigill_binary(own_cache / "llama-server")
    monkeypatch.setenv("LLAMA_SERVER", str(binary))
    with pytest.raises(SetupError) as caught:
        ensure_llama_server(progress=lambda line: None)
    message = str(caught.value)
    assert message.startswith(f"LLAMA_SERVER={binary} does not run on this machine: ")
    assert "killed by SIGILL (illegal instruction)" in message and "\n" not in message


def test_a_cached_binary_built_on_another_cpu_is_checked_before_use(own_cache, llama_server):
    features = llamacpp_build.cpu_features()
    config = llamacpp_build.build_configs(features)[0]
    cache_build(config, llama_server, built_on_features={"sse2", "avx"})
    lines = []
    assert ensure_llama_server(progress=lines.append) == config.binary
    assert any("was built on another CPU (other-node): checking it on this one" in line for line in lines), lines
    assert any(line.startswith(f"[setup] checked {config.binary}: it served a completion") for line in lines), lines


def test_a_cached_binary_that_dies_here_is_not_used_and_a_rebuild_is_tried(own_cache):
    features = llamacpp_build.cpu_features()
    cpu, portable = llamacpp_build.build_configs(features)
    cache_build(cpu, sigill_binary(own_cache / "fake"), built_on_features={"sse2"})
    lines = []
    with pytest.raises(SetupError, match="no-such-sdist"):  # the portable build was attempted
        ensure_llama_server(progress=lines.append)
    assert any(line.startswith("[setup] the cpu build does not run on this machine: ") and
               "killed by SIGILL (illegal instruction)" in line for line in lines), lines


def test_a_cached_build_needing_features_this_cpu_lacks_is_never_run(own_cache):
    marker = own_cache / "it-ran"
    config = llamacpp_build.build_configs(llamacpp_build.cpu_features())[0]
    cache_build(config, sigill_binary(own_cache / "fake", marker), built_on_features={"amx_future"},
                requires=config.requires | {"amx_future"})
    lines = []
    with pytest.raises(SetupError, match="no-such-sdist"):  # rebuilt instead
        ensure_llama_server(progress=lines.append)
    assert not marker.exists()
    assert any("needs CPU features this machine lacks (amx_future)" in line for line in lines), lines


def test_make_engine_fails_with_one_line_for_a_broken_binary(own_cache):
    env_binary = sigill_binary(own_cache / "llama-server")
    completed = subprocess.run([sys.executable, "-m", "llm_autotuner.cluster.llamacpp_setup"], capture_output=True, text=True,
                               timeout=120, env={**os.environ, "LLAMA_SERVER": str(env_binary)})
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1 and "killed by SIGILL" in completed.stderr


def running(*argv: str) -> bool:
    """Whether a process whose command line is exactly `argv` runs."""
    wanted = [a.encode() for a in argv]
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")[:-1] == wanted:
                return True
        except OSError:
            pass
    return False


def test_a_build_step_past_its_deadline_is_stopped_with_everything_it_started(monkeypatch):
    # cmake's build runs make, which runs the compilers: stopping cmake alone left them compiling.
    monkeypatch.setattr(llamacpp_build, "STEP_TIMEOUT_S", 1)
    with pytest.raises(SetupError, match="still running after 1 s"):
        llamacpp_build._run(["sh", "-c", "sleep 4243 & wait"])
    assert not running("sleep", "4243")


def test_a_build_another_process_holds_is_waited_for_with_a_word_and_a_deadline(own_cache, monkeypatch):
    import fcntl
    import threading

    config = llamacpp_build.build_configs(llamacpp_build.cpu_features())[0]
    config.folder.parent.mkdir(parents=True)
    holder = open(config.folder.parent / f".{config.folder.name}.lock", "w")
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process's build (flock locks are per open file)
    monkeypatch.setattr(llamacpp_build, "LOCK_WAIT_S", 1)
    lines = []
    with pytest.raises(SetupError, match="held the build lock .* for over 1 s"):
        llamacpp_build.build(config, lines.append)
    assert any("another process is building this llama-server" in line for line in lines), lines
    # Released in time, the waiter goes on to build (here: to its missing source distribution).
    monkeypatch.setattr(llamacpp_build, "LOCK_WAIT_S", 60)
    threading.Timer(1.0, holder.close).start()
    with pytest.raises(SetupError, match="no-such-sdist"):
        llamacpp_build.build(config, lines.append)
