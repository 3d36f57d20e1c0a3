"""Flag values an engine refuses together, each valid alone (../shared/notes/engines.md, "Flags
that constrain each other", each checked in the engine's source; the llama.cpp rule seen with its
server here), and a value an engine's --help lists that it refuses at start. Values an engine
adjusts by itself are not rules: the engine starts (those it runs as other values are
EngineProfile.effective's, so that such a config is not run twice).

A search space that sweeps two such flags samples some configs the engine will not start with.
Deploying one costs an engine start (minutes on a GPU cluster) and ends as a failed trial whose
reason is an engine's log line. Such a config is skipped instead, as infeasible, with the rule's
words (trainables/trial.py); a task whose fixed flags break a rule is refused before the run.
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

from llm_autotuner.task import FloatRange, IntRange, given_values

# Beyond this many combinations of the values a task gives, only each range's ends are tried.
MAX_COMBINATIONS = 10_000


@dataclass(frozen=True)
class Rule:
    flags: tuple[str, ...]  # canonical names; the rule holds only when every one is set
    broken: Callable[..., bool]  # their values (as the task gives them, in that order) break it
    words: Callable[..., str]  # what is refused, after "the config "
    # Flags the rule judges at the engine's own default when a config does not set them.
    defaults: dict[str, Any] = field(default_factory=dict)

    def values(self, flags: dict[str, Any]) -> list[Any] | None:
        """The rule's flags' values in one config, or None when one it needs is not set."""
        if any(name not in flags and name not in self.defaults for name in self.flags):
            return None
        return [flags[name] if name in flags else self.defaults[name] for name in self.flags]


def whole(*values: Any) -> bool:
    # numbers.Integral: a searcher may suggest numpy's integers
    return all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values)


# vLLM's --dtype spellings (config/model.py _STR_DTYPE_TO_TORCH_DTYPE); auto is the model's.
_VLLM_DTYPES = {"half": "float16", "float16": "float16", "bfloat16": "bfloat16", "float": "float32",
                "float32": "float32"}

# The llama.cpp cache types that are not quantized (its --help lists f32, f16, bf16 and quantized ones).
_PLAIN_CACHE = {"f32", "f16", "bf16"}

ATTENTION_BACKENDS = ("attention-backend", "decode-attention-backend", "prefill-attention-backend")

# SGLang 0.5.23 arg_groups/overrides.py `_mla_backend_page_constraints`, in its order: a backend,
# the flags of ATTENTION_BACKENDS it is looked for in, and the page sizes it keeps; any other page
# size (unset too) runs as 64, with a warning. (FA4 forces its page on SM100 GPUs only: FA4_ON_SM100.)
_PAGE_FORCING_BACKENDS = (("flashmla", 2, ()), ("trtllm_mla", 2, (32, 64)), ("cutedsl_mla", 3, (32, 64)),
                          ("trtllm_mha", 3, (16, 32, 64, 128)), ("hpc_ops", 3, (64,)))


def sglang_page(page: Any, attention: Any, decode: Any, prefill: Any) -> tuple[Any, str]:
    """The page size SGLang runs with, given --page-size (None: unset, then 1) and the flags of
    ATTENTION_BACKENDS, and how a rule says it."""
    said = f"--page-size {page}"
    backends = (attention, decode, prefill)
    for backend, flags, kept in _PAGE_FORCING_BACKENDS:
        if backend in backends[:flags] and page not in kept:
            page, said = 64, f"the page size 64 {backend} runs with"
    # overrides.py `_intel_xpu_page_constraint`, next: intel_xpu as the prefill or decode backend
    # (each --attention-backend when unset) keeps 64 and 128, and 16 and 32 for MLA models, else
    # runs 128. Which models use MLA is not known here: 16 and 32 are judged as kept (a chunk they
    # refuse, 128 refuses too), so a config that starts is never skipped.
    if "intel_xpu" in (prefill or attention, decode or attention) and page not in (16, 32, 64, 128):
        page, said = 128, "the page size 128 intel_xpu runs with"
    return (1 if page is None else page), said


# overrides.py `_fa4_page_constraint`, after the others: with fa4 for any of ATTENTION_BACKENDS, on
# SM100 GPUs, for a model without MLA and unless EAGLE drafts more than one token per step
# (--speculative-eagle-topk above 1), SGLang runs pages of 128 whatever is set; elsewhere (other
# GPUs, MLA models) the page `sglang_page` gives. So a chunk can be refused on the one and not the
# other: said (ON_SOME_GPUS), and skipped only when refused on both.
FA4_ON_SM100 = "the page size 128 fa4 runs with on SM100 GPUs (B200, GB200) for models without MLA"


def _chunk_refusal(chunk: Any, page: Any, page_words: str, mode: Any, dp: tuple[Any, ...]) -> str | None:
    """Why SGLang refuses --chunked-prefill-size `chunk` (after attention DP divides it) with pages
    of `page`, or None when it does not."""
    if not whole(chunk, page) or chunk <= 0 or page < 1 or mode == "decode":
        return None
    width, width_words = attention_dp(*dp)
    if chunk // width % page == 0:
        return None
    divided = f"which {width_words} divides to {chunk // width}, " if width > 1 else ""
    return f"sets --chunked-prefill-size {chunk}, {divided}not a multiple of {page_words}"


def _sglang_chunk_refusals(chunk: Any, page: Any, attention: Any, decode: Any, prefill: Any, mode: Any, topk: Any,
                           *dp: Any) -> tuple[str | None, str | None]:
    """Why SGLang refuses a chunk with the page it runs with on most GPUs, and on SM100 GPUs (the
    same verdict, unless fa4 forces pages of 128 there)."""
    usual = _chunk_refusal(chunk, *sglang_page(page, attention, decode, prefill), mode, dp)
    if "fa4" not in (attention, decode, prefill) or (whole(topk) and topk > 1):
        return usual, usual
    return usual, _chunk_refusal(chunk, 128, FA4_ON_SM100, mode, dp)


def _sglang_chunk_refused_everywhere(*values: Any) -> str | None:
    usual, sm100 = _sglang_chunk_refusals(*values)
    return f"{usual}, which SGLang refuses at start" if usual and sm100 else None


def _sglang_chunk_refused_on_some_gpus(*values: Any) -> str | None:
    usual, sm100 = _sglang_chunk_refusals(*values)
    if usual and not sm100:
        return (f"{usual}, which SGLang refuses at start except on SM100 GPUs (B200, GB200) for models without "
                "MLA, where fa4 runs pages of 128")
    if sm100 and not usual:
        return f"{sm100}, which SGLang refuses at start there"
    return None


# The flags SGLang's chunk rule reads, and their defaults: unset, page 1 (as forced as None), backends
# chosen by model and GPU (not judged).
_SGLANG_CHUNK_FLAGS = ("chunked-prefill-size", "page-size", *ATTENTION_BACKENDS, "disaggregation-mode",
                       "speculative-eagle-topk", "enable-dp-attention", "dp-size", "attn-dp-size")
_SGLANG_CHUNK_DEFAULTS = {"page-size": 1, **dict.fromkeys(ATTENTION_BACKENDS, ""), "disaggregation-mode": "null",
                          "speculative-eagle-topk": 0, "enable-dp-attention": False, "dp-size": 1, "attn-dp-size": 1}


RULES = {
    "vllm": [Rule(("max-num-batched-tokens", "max-num-seqs"),
                  lambda tokens, seqs: whole(tokens, seqs) and tokens < seqs,
                  lambda tokens, seqs: f"sets --max-num-batched-tokens {tokens} below --max-num-seqs {seqs}, "
                                       "which vLLM refuses at start"),
             # config/scheduler.py verify_max_model_len (read at 01230b40): a ValueError at start. Only
             # when the task sets max-model-len: its default comes from the model, unknown here.
             Rule(("max-num-batched-tokens", "max-model-len", "enable-chunked-prefill"),
                  lambda tokens, length, chunked: whole(tokens, length) and chunked is False and tokens < length,
                  lambda tokens, length, _: f"sets --max-num-batched-tokens {tokens} below --max-model-len {length} "
                                            "with chunked prefill off, which vLLM refuses at start"),
             # config/vllm.py `_reject_mismatched_float_kv_cache` (0.33.0): a ValueError at start. Only when
             # the task sets --dtype: auto is the model's, unknown here. (DeepSeek-V3.2's hook turns a
             # bfloat16 cache into auto first: that model's such configs would start, and are skipped.)
             Rule(("kv-cache-dtype", "dtype"),
                  lambda cache, dtype: cache in ("float16", "bfloat16")
                  and _VLLM_DTYPES.get(str(dtype).lower(), cache) != cache,
                  lambda cache, dtype: f"sets --kv-cache-dtype {cache} with --dtype {dtype}, which vLLM refuses at "
                                       "start (a float KV cache must be the model's dtype)")],
    # SGLang 0.5.23 (the wheel's arg_groups): parallel_hook.py turns --enable-dp-attention with
    # --dp-size N into --attn-dp-size N (dp-size 1: off), refuses attention DP beside DP replicas,
    # asserts tp % attn-dp == 0 and divides chunked-prefill-size by attn-dp; then
    # validation_hook.py check_server_args asserts the divided chunk (> 0) is a multiple of
    # page-size. (Read the same, with dp-size only, in server_args.py at 001067ff.)
    # (Not checked on a decode worker of disaggregated serving.)
    # The page size is the one SGLang runs with (`sglang_page`: some attention backends force theirs;
    # on SM100 GPUs fa4 forces 128, so a config refused on some GPUs only is said: ON_SOME_GPUS).
    "sglang": [Rule(_SGLANG_CHUNK_FLAGS, lambda *values: _sglang_chunk_refused_everywhere(*values) is not None,
                    _sglang_chunk_refused_everywhere, defaults=_SGLANG_CHUNK_DEFAULTS),
               Rule(("tp-size", "enable-dp-attention", "dp-size", "attn-dp-size"),
                    lambda tp, *dp: whole(tp) and tp % attention_dp(*dp)[0] != 0,
                    lambda tp, *dp: f"sets --tp-size {tp}, not a multiple of {attention_dp(*dp)[1]}, "
                                    "which SGLang refuses at start",
                    defaults={"tp-size": 1, "enable-dp-attention": False, "dp-size": 1, "attn-dp-size": 1}),
               Rule(("attn-dp-size", "dp-size"),
                    lambda attn, dp: whole(attn, dp) and attn > 1 and dp > 1,
                    lambda attn, dp: f"sets --attn-dp-size {attn} with --dp-size {dp} (attention DP beside "
                                     "data-parallel replicas), which SGLang refuses at start"),
               # One value alone: 0.5.23's argparse lists priority, and its scheduler knows no such
               # policy (schedule_policy.py `_validate_and_adjust_policy`: "Unknown schedule_policy").
               Rule(("schedule-policy",),
                    lambda policy: policy == "priority",
                    lambda _: "sets --schedule-policy priority, which SGLang 0.5.23 lists but refuses at start "
                              "(priority scheduling is --enable-priority-scheduling with fcfs or lof)"),
               # arg_groups/validation_hook.py (0.5.23): an assert.
               Rule(("enable-priority-scheduling", "schedule-policy"),
                    lambda on, policy: on is True and policy not in ("fcfs", "lof"),
                    lambda _, policy: f"sets --enable-priority-scheduling with --schedule-policy {policy}, which "
                                      "SGLang refuses at start (fcfs or lof only)"),
               # managers/schedule_policy.py `_validate_and_adjust_policy` (0.5.23): a ValueError at start.
               Rule(("schedule-policy", "disable-radix-cache"),
                    lambda policy, off: policy == "shortest-prefill-first" and off is True,
                    lambda *_: "sets --schedule-policy shortest-prefill-first with --disable-radix-cache, which "
                               "SGLang refuses at start (the policy needs the prefix cache)"),
               # arg_groups/overrides.py `_mla_kv_cache_dtype_checks` and `_cutedsl_prefill_backend_fill`
               # (0.5.23): a ValueError or an assert at start, on any GPU.
               Rule(("kv-cache-dtype", *ATTENTION_BACKENDS[:2]),
                    lambda cache, *backends: "trtllm_mla" in backends and cache not in ("fp8_e4m3", "bf16", "auto"),
                    lambda cache, *_: f"sets --kv-cache-dtype {cache} with the trtllm_mla attention backend, which "
                                      "SGLang refuses at start (fp8_e4m3, bf16 or auto only)",
                    defaults={"kv-cache-dtype": "auto", **dict.fromkeys(ATTENTION_BACKENDS, "")}),
               Rule(("kv-cache-dtype", *ATTENTION_BACKENDS),
                    lambda cache, *backends: "cutedsl_mla" in backends
                    and cache not in ("fp8_e4m3", "bf16", "bfloat16", "auto"),
                    lambda cache, *_: f"sets --kv-cache-dtype {cache} with the cutedsl_mla attention backend, which "
                                      "SGLang refuses at start (fp8_e4m3, bf16, bfloat16 or auto only)",
                    defaults={"kv-cache-dtype": "auto", **dict.fromkeys(ATTENTION_BACKENDS, "")}),
               Rule(("prefill-attention-backend",),
                    lambda backend: backend == "cutedsl_mla",
                    lambda _: "sets --prefill-attention-backend cutedsl_mla, which SGLang refuses at start (it "
                              "decodes only)"),
               # check_server_args (0.5.23, and server_args.py at 001067ff): an assert, so the server exits.
               Rule(("enable-torch-compile", "disable-cuda-graph-padding"),
                    lambda compiled, unpadded: compiled is True and unpadded is True,
                    lambda *_: "sets --enable-torch-compile with --disable-cuda-graph-padding, which SGLang "
                               "refuses at start")],
    "llama.cpp": [Rule(("cache-type-v", "flash-attn"),
                       lambda cache, attention: str(cache).lower() not in _PLAIN_CACHE
                       and attention in (False, "off"),  # false: the profile spells it off
                       lambda cache, _: f"sets --cache-type-v {cache} with --flash-attn off, which llama.cpp "
                                        "refuses at start (a quantized V cache needs flash attention)")],
}


# What the engine chooses for a flag a task leaves out, where a rule needs that choice.
LEFT_TO_ENGINE = "left to the engine"

# Refused on some GPUs only: said, not skipped (on others the config starts). vLLM 0.33.0's server
# (engine/arg_utils.py get_batch_defaults, and VLLM.chosen_in_log) chooses --max-num-batched-tokens
# from the GPU: 2048 under 70 GiB and on A100s, 8192 from 70 GiB, 16384 from 160 GiB, twice that
# with --performance-mode throughput, at least --max-model-len with chunked prefill off (unknown
# here: not judged); and keeps a --max-num-seqs the task sets, then refuses tokens below seqs (the
# first rule in RULES): judged at the smallest choice. SGLang's fa4: FA4_ON_SM100.
ON_SOME_GPUS = {
    "vllm": [Rule(("max-num-batched-tokens", "max-num-seqs", "enable-chunked-prefill", "performance-mode"),
                  lambda tokens, seqs, chunked, mode: tokens == LEFT_TO_ENGINE and chunked is not False
                  and whole(seqs) and seqs > _vllm_smallest_tokens(mode),
                  lambda _, seqs, __, mode: f"sets --max-num-seqs {seqs} and leaves --max-num-batched-tokens to "
                  f"vLLM, which chooses {_vllm_smallest_tokens(mode)} on GPUs under 70 GiB and on A100s and then "
                  f"refuses to start there (fewer tokens per step than sequences); --max-num-batched-tokens {seqs} "
                  "or more starts on any GPU",
                  defaults={"max-num-batched-tokens": LEFT_TO_ENGINE, "enable-chunked-prefill": True,
                            "performance-mode": "balanced"})],
    "sglang": [Rule(_SGLANG_CHUNK_FLAGS, lambda *values: _sglang_chunk_refused_on_some_gpus(*values) is not None,
                    _sglang_chunk_refused_on_some_gpus, defaults=_SGLANG_CHUNK_DEFAULTS)],
}


def _vllm_smallest_tokens(mode: Any) -> int:
    return 4096 if mode == "throughput" else 2048


def attention_dp(attention: Any, dp: Any, attn: Any) -> tuple[int, str]:
    """SGLang's attention-DP width (1: off) from --enable-dp-attention, --dp-size, --attn-dp-size,
    and the flags that set it, as a rule says them."""
    if whole(attn) and attn > 1:
        return attn, f"--attn-dp-size {attn}"
    if attention is True and whole(dp) and dp > 1:
        return dp, f"--dp-size {dp} with --enable-dp-attention"
    return 1, ""


def conflict(engine: str, flags: dict[str, Any]) -> str | None:
    """What the engine refuses in one config's flags (keyed by canonical name), or None."""
    for rule in RULES.get(engine, []):
        values = rule.values(flags)
        if values is not None and rule.broken(*values):
            return rule.words(*values)
    return None


def possible_conflicts(engine: str, fixed: dict[str, Any], space: dict[str, Any],
                       rules: dict[str, list[Rule]] = RULES) -> list[tuple[tuple[str, ...], str, bool]]:
    """Each rule some configs of the task break: its flags, its words for one such config, and
    whether every config breaks it (then no trial could start). `fixed` and `space` are keyed by
    canonical name; a flag the space sets overrides the fixed one, as in a trial."""
    found = []
    for rule in rules.get(engine, []):
        domains = [space[name] if name in space else [fixed[name]] if name in fixed
                   else [rule.defaults[name]] if name in rule.defaults else None for name in rule.flags]
        if None in domains:
            continue
        combinations, complete = _combinations(domains)
        # None: the engine's default, the rule's where it has one (as a trial's flags leave it out)
        combinations = [tuple(rule.defaults.get(name) if value is None else value
                              for name, value in zip(rule.flags, values)) for values in combinations]
        broken = [values for values in combinations if None not in values and rule.broken(*values)]
        if broken:
            # Every config: every combination it can have was tried, and each is broken.
            found.append((rule.flags, rule.words(*broken[0]), complete and len(broken) == len(combinations)))
    return found


def _combinations(domains: list[Any]) -> tuple[list[tuple[Any, ...]], bool]:
    """The combinations of values to try, and whether they are all the domains can give."""
    values = [_listed(domain) for domain in domains]
    complete = None not in values and math.prod(len(listed) for listed in values) <= MAX_COMBINATIONS
    if not complete:
        values = [given_values(domain) for domain in domains]  # a continuous range, or too many: the ends
    return list(itertools.product(*values)), complete


def _listed(domain: Any) -> list[Any] | None:
    """Every value a domain holds (choices, a stepped range), or None (continuous, or too many)."""
    if not isinstance(domain, (IntRange, FloatRange)):
        return domain if isinstance(domain, list) else [domain]
    return domain.values() if (domain.count() or MAX_COMBINATIONS + 1) <= MAX_COMBINATIONS else None
