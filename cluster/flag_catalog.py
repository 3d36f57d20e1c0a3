"""What autotuner knows of SGLang's and vLLM's tuning flags, for a task whose engine cannot be
asked here (its image is the cluster's, or it is not installed on the driver's machine).

A bad flag value otherwise shows only when each trial's engine refuses it, after minutes of
starting on a GPU. The engine's own --help is the authority (tuner/driver.py: check_known_flags);
this catalog (SGLang 0.5.23 and vLLM 0.33.0's sources, read 2026-11-27) stands in where it cannot
be read. Types and ranges do not change between releases: a value of the wrong type or out of
range is refused, wherever the engine is. Names and choice lists do (flags are added, renamed,
given new values): a name or value the catalog lacks is only pointed out, with the nearest it
knows, and left to the engine to judge.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from llm_autotuner.errors import TaskError
from llm_autotuner.task import given_values


@dataclass(frozen=True)
class Flag:
    kind: type  # of its value: int, float, str or bool; object: any (SGLang's token counts take "16k")
    within: tuple[Callable[[float], bool], str] | None = None  # a numeric value's range, and its words
    choices: tuple[str, ...] = ()  # the values a version takes (not exhaustive across versions)


AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
AT_LEAST_0 = (lambda v: v >= 0, "at least 0")
OPEN_FRACTION = (lambda v: 0 < v < 1, "above 0 and below 1")
FRACTION = (lambda v: 0 < v <= 1, "above 0 and at most 1")
CHUNK = (lambda v: v == -1 or v >= 1, "-1 (off) or at least 1")


def _counts(*names: str) -> dict[str, Flag]:
    return {name: Flag(int, AT_LEAST_1) for name in names}


def _switches(*names: str) -> dict[str, Flag]:
    return {name: Flag(bool) for name in names}


SGLANG = {
    **_counts("tp-size", "dp-size", "attn-dp-size", "pp-size", "ep-size", "max-running-requests", "max-total-tokens",
              "page-size", "cuda-graph-max-bs-decode", "cuda-graph-max-bs-prefill", "torch-compile-max-bs",
              "num-continuous-decode-steps", "stream-interval"),
    **_switches("disable-radix-cache", "enable-torch-compile", "enable-mixed-chunk", "disable-overlap-schedule",
                "enable-dp-attention", "disable-cuda-graph", "disable-cuda-graph-padding"),
    "max-prefill-tokens": Flag(object),
    "mem-fraction-static": Flag(float, OPEN_FRACTION),
    "chunked-prefill-size": Flag(int, CHUNK),
    "schedule-conservativeness": Flag(float, AT_LEAST_0),
    "schedule-policy": Flag(str, choices=("lpm", "random", "fcfs", "dfs-weight", "lof", "priority", "routing-key",
                                          "hrrn", "shortest-prefill-first")),
    "cuda-graph-backend-decode": Flag(str, choices=("full", "breakable", "disabled")),
    "cuda-graph-backend-prefill": Flag(str, choices=("full", "breakable", "disabled")),
    "sampling-backend": Flag(str, choices=("flashinfer", "pytorch", "ascend", "intel_xpu")),
    "kv-cache-dtype": Flag(str, choices=("auto", "fp8_e5m2", "fp8_e4m3", "mxfp8", "bf16", "bfloat16", "nvfp4",
                                         "fp4_mx_block16")),
    # arg_groups/choices.py ATTENTION_BACKEND_CHOICES, for each of the three
    **dict.fromkeys(("attention-backend", "decode-attention-backend", "prefill-attention-backend"), Flag(str, choices=(
        "triton", "torch_native", "flex_attention", "dsa", "nsa", "qsa", "dsv4", "compressed", "fa3", "fa4",
        "flashinfer", "llada2_cfg_flashinfer", "flashmla", "trtllm_mla", "cutedsl_mla", "tokenspeed_mla", "trtllm_mha",
        "hpc_ops", "minicpm_flashattn", "minicpm_flashinfer", "aiter", "wave", "intel_amx", "ascend", "intel_xpu"))),
    "quantization": Flag(str),
}

VLLM = {
    **_counts("tensor-parallel-size", "pipeline-parallel-size", "data-parallel-size",
              "prefill-context-parallel-size", "max-num-seqs", "max-num-batched-tokens", "block-size",
              "max-cudagraph-capture-size"),
    **_switches("enable-expert-parallel", "enable-chunked-prefill", "enable-prefix-caching", "enforce-eager",
                "async-scheduling"),
    "gpu-memory-utilization": Flag(float, FRACTION),
    "optimization-level": Flag(int, (lambda v: 0 <= v <= 3, "0 to 3")),
    "performance-mode": Flag(str, choices=("balanced", "interactivity", "throughput")),
    "scheduling-policy": Flag(str, choices=("fcfs", "priority")),
    "kv-cache-dtype": Flag(str, choices=("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc",
                                         "nvfp4", "int8_per_token_head")),
    "quantization": Flag(str),
}

CATALOGS = {"sglang": ("SGLang 0.5.23", SGLANG), "vllm": ("vLLM 0.33.0", VLLM)}

# Flags whose values all run alike under the load autotuner sends (read in the release named):
# searched, they spend trials measuring noise. Said, not refused: the cluster's image may be another
# release.
MEASURES_NOTHING = {"sglang": {
    # managers/scheduler_components/new_token_ratio_tracker.py: it scales only the guess of how much
    # of its max_tokens a request will use; schedule_policy.py takes 1.0 for a request with
    # ignore_eos, which genai-bench sends to SGLang and vLLM whenever it sets max_tokens (always).
    "schedule-conservativeness": "SGLang 0.5.23 uses it only to guess how early requests stop, and "
                                 "genai-bench's requests never stop early (ignore_eos)",
    # Only declared (arg_groups/fields/schedule.py); older releases read it.
    "num-continuous-decode-steps": "SGLang 0.5.23 declares it but reads it nowhere",
}}


def measures_nothing(engine: str, space: dict[str, Any], canonical: Callable[[str], str]) -> list[str]:
    """What to say of searched flags whose values would all measure alike here (MEASURES_NOTHING)."""
    inert = MEASURES_NOTHING.get(engine, {})
    return [f"search_space.{name}: {inert[canonical(name)]}: its values will measure alike"
            for name in space if canonical(name) in inert]

# llama-server's own --help is always asked (it is built here), but it names no types, and it reads
# a whole number with std::stoi, which stops at the first letter: --ctx-size 16k runs as 16.
VALUE_KINDS = {"llama.cpp": dict.fromkeys(("ctx-size", "batch-size", "ubatch-size", "parallel", "threads-batch",
                                           "n-predict", "keep", "cache-reuse", "cache-ram", "ctx-checkpoints",
                                           "n-cpu-moe"), Flag(int))}


def check(engine: str, where: str, canonical: str, domain: Any, asked_engine: bool) -> list[str]:
    """Raise TaskError for a value of the wrong type or out of range; return what to point out when
    the engine itself could not be asked (`asked_engine` False): a name or a value the catalog does
    not know, with the nearest one it does."""
    if engine not in CATALOGS:
        kind = VALUE_KINDS.get(engine, {}).get(canonical)
        for value in given_values(domain) if kind else []:
            if value is not None:
                _check_type(where, canonical, kind, value)
        return []
    version, flags = CATALOGS[engine]
    flag = flags.get(canonical)
    if flag is None and canonical.startswith("no-") and canonical[3:] in flags:
        flag = Flag(bool)  # a switch's negative form (vLLM's --no-enable-prefix-caching)
    if flag is None:
        # engine.args hold many flags beside the tuning ones the catalog knows: pointed out there
        # only when close to one; a searched flag always (it multiplies the trials).
        near = difflib.get_close_matches(canonical, flags, n=1, cutoff=0.8)
        if asked_engine or not near and not where.startswith("search_space."):
            return []
        if not near:
            nearest = difflib.get_close_matches(canonical, flags, n=1, cutoff=0.6)
            return [f"{where}: --{canonical} is not among the {version} tuning flags autotuner's catalog holds"
                    + (f" (the nearest: --{nearest[0]})" if nearest else "")
                    + ": its name and values are not checked (left to the engine to judge at start)"]
        return [f"{where}: {engine} has no --{canonical} that autotuner knows of ({version}); did you mean "
                f"--{near[0]}? (left to the engine to judge at start)"]
    notes = []
    for value in given_values(domain):
        if value is None:  # the engine's own default
            continue
        _check_type(where, canonical, flag, value)
        if flag.within and isinstance(value, (int, float)) and not flag.within[0](value):
            raise TaskError(f"{where}: {value!r} is out of range for {engine}'s --{canonical} ({flag.within[1]})")
        if flag.choices and not asked_engine and str(value).casefold() not in flag.choices:
            near = difflib.get_close_matches(str(value).casefold(), flag.choices, n=1)
            notes.append(f"{where}: {value!r} is not one of {version}'s values for --{canonical} "
                         f"({', '.join(flag.choices)}){f'; did you mean {near[0]!r}?' if near else ''} "
                         "(left to the engine to judge at start)")
    return notes


def _check_type(where: str, canonical: str, flag: Flag, value: Any) -> None:
    if flag.kind is object:
        return
    if flag.kind is bool:
        fits = isinstance(value, bool)
    elif flag.kind is int:
        fits = isinstance(value, int) and not isinstance(value, bool)
    elif flag.kind is float:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        fits = isinstance(value, str)
    if not fits:
        words = {bool: "true or false", int: "a whole number", float: "a number", str: "a word"}[flag.kind]
        # A quoted number is a word in YAML: the rules and the searcher compare numbers.
        quoted = flag.kind in (int, float) and isinstance(value, str) and _is_number(value)
        raise TaskError(f"{where}: {value!r} is not {words} (--{canonical})"
                        + ("; write it without quotes" if quoted else ""))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
