"""Building llama.cpp's `llama-server` for the CPU it will run on, and caching it by what it needs.

No wheel ships `llama-server`, so we build only that target from the llama.cpp tree vendored in
the `llama-cpp-python` source distribution.

Which instructions go in. A `-march=native` build (llama.cpp's default) takes every instruction
the build machine advertises. This llama.cpp version's AMX kernels die by SIGILL on some CPUs that
advertise AMX (upstream llama.cpp PR #26954: the per-thread XTILEDATA permission is not asked
for), and a native binary in a shared cache dies on any node with fewer features. So we build
with `GGML_NATIVE=OFF` and name each instruction set ggml knows, from this CPU's flags, never AMX.
`GGML_CPU_ALL_VARIANTS` (run-time dispatch) would not help here: its scoring
(ggml-cpu/arch/x86/cpu-feats.cpp) ranks the `sapphirerapids` variant, the one with AMX, highest
on such a CPU.

The cache. Each build lives in its own folder named by a hash of what the binary depends on (the
llama.cpp version, the CMake options, the CPU architecture), with `build.json` recording the CPU
features it requires and those of the machine that built it. A binary is used only on a machine
that has every feature it requires, and only after it answered a completion there
(cluster/engine_check.py).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from llm_autotuner.cluster.procs import ProcessGroup
from llm_autotuner.errors import SetupError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
# An already downloaded source distribution (an offline machine, a mirror); else pip downloads it.
SDIST_ENV = "AUTOTUNER_LLAMA_CPP_SDIST"
STEP_TIMEOUT_S = 3600  # a download or build step; the build takes 5-20 minutes on 2 cores
LOCK_WAIT_S = 7200  # for another process's build of the same config: its steps' deadlines, and then some
LOCK_POLL_S = 1.0

# ggml's x86 instruction-set options and the /proc/cpuinfo flags each one compiles in
# (ggml-cpu/CMakeLists.txt: GGML_AVX512 adds -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw).
X86_OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_F16C": ("f16c",),
    "GGML_FMA": ("fma",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX2": ("avx2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
}
# Never compiled in: this llama.cpp version's AMX path faults (see the module docstring).
X86_NEVER = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
# The fallback when the build for this CPU fails its check: Haswell's set (2013), what almost
# every x86 server of the last decade runs, or nothing beyond x86-64 if even that is missing.
X86_PORTABLE = ("GGML_SSE42", "GGML_AVX", "GGML_F16C", "GGML_FMA", "GGML_BMI2", "GGML_AVX2")
COMMON_OPTIONS = {"CMAKE_BUILD_TYPE": "Release", "LLAMA_CURL": "OFF", "BUILD_SHARED_LIBS": "OFF",
                  "LLAMA_BUILD_TESTS": "OFF", "LLAMA_BUILD_EXAMPLES": "OFF"}


def cpu_features() -> frozenset[str]:
    """The instruction-set flags this machine's CPU advertises (x86 `flags`, Arm `Features`)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


@dataclass(frozen=True)
class BuildConfig:
    """One way to build the binary: its CMake options and the CPU features the result requires."""

    name: str  # "cpu" (this CPU's instruction sets) or "portable" (the fallback)
    options: tuple[tuple[str, str], ...]
    requires: frozenset[str]

    @property
    def key(self) -> str:
        text = json.dumps([LLAMA_CPP_PYTHON_VERSION, platform.machine(), sorted(self.options)])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def folder(self) -> Path:
        return cache_dir() / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}-{self.name}-{self.key}"

    @property
    def binary(self) -> Path:
        return self.folder / "llama-server"

    def cmake_args(self) -> list[str]:
        return [f"-D{name}={value}" for name, value in self.options]


def _x86_config(name: str, enabled: list[str]) -> BuildConfig:
    options = dict(COMMON_OPTIONS, GGML_NATIVE="OFF")
    options |= {option: ("ON" if option in enabled else "OFF") for option in [*X86_OPTIONS, *X86_NEVER]}
    requires = frozenset(flag for option in enabled for flag in X86_OPTIONS[option])
    return BuildConfig(name, tuple(sorted(options.items())), requires)


def build_configs(features: frozenset[str]) -> list[BuildConfig]:
    """The builds to try on a machine with `features`, best first."""
    if not is_x86():
        # Other architectures: the compiler's native choice, then its baseline.
        native = BuildConfig("cpu", tuple(sorted({**COMMON_OPTIONS, "GGML_NATIVE": "ON"}.items())), features)
        baseline = BuildConfig("portable", tuple(sorted({**COMMON_OPTIONS, "GGML_NATIVE": "OFF"}.items())),
                               frozenset())
        return [native, baseline]
    have = [option for option, flags in X86_OPTIONS.items() if set(flags) <= features]
    portable = [option for option in X86_PORTABLE if option in have]
    if portable == have:  # this CPU has nothing beyond the portable set: fall back to plain x86-64
        portable = []
    return [_x86_config("cpu", have), _x86_config("portable", portable)]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autotuner"


def read_record(config: BuildConfig) -> dict | None:
    """The cached build's `build.json`, or None when there is no complete build in its folder."""
    try:
        record = json.loads((config.folder / "build.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if config.binary.is_file() and isinstance(record, dict) else None


def build(config: BuildConfig, progress=print, *, replace: bool = False) -> Path:
    """Build `config` into its cache folder (about 5 minutes on 2 cores) and return the binary;
    `replace`: the cached build there was rejected, build over it.

    A lock file serialises builds of one config (two runs, or nodes sharing a home directory);
    whoever waited finds the finished build and returns it.
    """
    config.folder.parent.mkdir(parents=True, exist_ok=True)
    with open(config.folder.parent / f".{config.folder.name}.lock", "w") as lock:
        _wait_for_lock(lock, progress)
        if not replace and read_record(config) is not None:
            return config.binary
        with tempfile.TemporaryDirectory(prefix="autotuner-llama-build-") as tmp:
            work = Path(tmp)
            source = _extract_vendored_llama_cpp(_sdist(work, progress), work / "src")
            cmake = _cmake()
            progress(f"[setup] building llama-server for this CPU ({config.name} build: "
                     f"{', '.join(sorted(config.requires)) or 'plain ' + platform.machine()}); "
                     "one time, about 5 minutes on 2 cores")
            _run([cmake, "-S", str(source), "-B", str(work / "build"), *config.cmake_args()])
            _run([cmake, "--build", str(work / "build"), "--target", "llama-server", "-j", str(os.cpu_count() or 2)])
            partial = config.folder.with_name(config.folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            shutil.copy2(work / "build" / "bin" / "llama-server", partial / "llama-server")
            record = {"llama_cpp_python": LLAMA_CPP_PYTHON_VERSION, "build": config.name,
                      "cmake_options": dict(config.options), "requires": sorted(config.requires),
                      "built_on": {"host": socket.gethostname(), "cpu_features": sorted(cpu_features()),
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
            (partial / "build.json").write_text(json.dumps(record, indent=1))
            shutil.rmtree(config.folder, ignore_errors=True)
            partial.replace(config.folder)  # atomic: an interrupted build never leaves a half binary
    progress(f"[setup] llama-server built: {config.binary}")
    return config.binary


def _wait_for_lock(lock, progress) -> None:
    """Take the build's lock; while another process builds, say so once and wait for it, up to
    LOCK_WAIT_S (a holder that is stopped or hung must not hang this run without a word)."""
    deadline = time.monotonic() + LOCK_WAIT_S
    said = False
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not said:
            progress(f"[setup] another process is building this llama-server (lock {lock.name}); waiting for it")
            said = True
        if time.monotonic() > deadline:
            raise SetupError(f"another process held the build lock {lock.name} for over {LOCK_WAIT_S} s; "
                             "stop it (or remove the lock file if no build runs) and try again")
        time.sleep(LOCK_POLL_S)


def _sdist(work: Path, progress) -> Path:
    given = os.environ.get(SDIST_ENV)
    if given:
        if not Path(given).is_file():
            raise SetupError(f"{SDIST_ENV}={given} is not a file")
        return Path(given)
    progress(f"[setup] downloading the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} source distribution")
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
          f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(work)])
    return next(work.glob("llama_cpp_python-*.tar.gz"))


def _cmake() -> str:
    cmake = shutil.which("cmake") or shutil.which("cmake", path=str(Path(sys.executable).parent))
    if cmake is None:
        _run([sys.executable, "-m", "pip", "install", "--quiet", "cmake"])
        cmake = str(Path(sys.executable).parent / "cmake")
    return cmake


def _extract_vendored_llama_cpp(sdist: Path, dest: Path) -> Path:
    try:
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if "/vendor/llama.cpp/" in m.name]
            archive.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise SetupError(f"cannot read {sdist}: {error}") from None
    roots = list(dest.glob("*/vendor/llama.cpp"))
    if not roots:
        raise SetupError(f"{sdist.name} holds no vendor/llama.cpp tree")
    return roots[0]


def _run(argv: list[str]) -> None:
    """Output streams to the terminal so the user sees the build progress. The step runs as a
    process group of its own, stopped whole (cmake's make and its compilers too) on a timeout,
    Ctrl-C or error, and by a watchdog should this process be killed (a cancelled Ray task)."""
    try:
        group = ProcessGroup(argv, log_path=None)
    except OSError as error:
        raise SetupError(f"cannot run {argv[0]}: {error.strerror or error}") from None
    try:
        code = group.process.wait(timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SetupError(f"command still running after {STEP_TIMEOUT_S} s, stopped: {' '.join(argv)}") from None
    finally:
        group.stop(grace_s=2.0)  # at once when it ended: only what it left behind is signalled
    if code != 0:
        raise SetupError(f"command failed with exit code {code}: {' '.join(argv)}")
