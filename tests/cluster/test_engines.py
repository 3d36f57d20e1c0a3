"""Engine profiles: parameter dicts become argv lists with each engine's own spelling."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from tests.conftest import until
from llm_autotuner.cluster.engine_check import _line_choices, _line_flags
from llm_autotuner.cluster.engines import LLAMA_CPP, SGLANG, VLLM, Launch
from llm_autotuner.cluster.flag_catalog import VALUE_KINDS
from llm_autotuner.cluster.local import free_port
from llm_autotuner.errors import TaskError
from llm_autotuner.task import parse_task
from llm_autotuner.tuner import cli
from llm_autotuner.tuner.driver import check_known_flags, preflight

LAUNCH = Launch("llama-server", "/models/m.gguf", "m", "127.0.0.1", 9000)


def test_llama_cpp_argv_with_aliases_and_bool_spelling():
    flags = LLAMA_CPP.merged({"ctx-size": 4096}, {"np": 4, "threads": 2, "flash-attn": False, "cont_batching": True})
    argv = LLAMA_CPP.argv(LAUNCH, flags)
    assert argv[:10] == ["llama-server", "--model", "/models/m.gguf", "--host", "127.0.0.1",
                         "--port", "9000", "--alias", "m", "--ctx-size"]
    assert argv[10:] == ["4096", "--parallel", "4", "--threads", "2", "--flash-attn", "off", "--cont-batching"]


def test_trial_value_overrides_fixed_flag_and_none_means_default():
    flags = LLAMA_CPP.merged({"threads": 1, "t": 3}, {"threads": None, "parallel": 2})
    assert flags == {"threads": 3, "parallel": 2}
    assert LLAMA_CPP.merged({}, {"threads": None}) == {}


def test_unknown_flags_pass_through_and_booleans_are_bare():
    argv = SGLANG.flag_argv({"enable-mixed-chunk": True, "disable-radix-cache": False, "some-new-flag": 7})
    assert argv == ["--enable-mixed-chunk", "--some-new-flag", "7"]


def test_llama_cpp_false_turns_off_every_flag_the_real_server_can_turn_off(llama_server):
    """A `false` left out of the argv keeps llama-server's default, which for these is on: the
    trial would run (and the results report) another config than the one named."""
    help_text = subprocess.run([llama_server, "--help"], capture_output=True, text=True, timeout=60).stdout
    pairs = set()
    for line in help_text.splitlines():  # a pair is named on one line (--mmproj and --no-mmproj are not a pair)
        names = set()
        for token in line.split():  # the line's leading flag spellings: "-kvo,  --kv-offload, -nkvo, --no-kv-offload"
            if not token.startswith("-"):
                break
            names.add(token.rstrip(","))
        pairs |= {name[2:] for name in names if name.startswith("--") and f"--no-{name[2:]}" in names}
    assert {"repack", "warmup", "cache-prompt", "kv-offload", "cont-batching"} <= pairs  # the parse found them
    for name in pairs:  # as a task spells it (webui, or its other spelling ui): one of the binary's
        off, on = (LLAMA_CPP.flag_argv(LLAMA_CPP.merged({}, {name: value})) for value in (False, True))
        assert off in ([f"--no-{name}"], [f"--no-{LLAMA_CPP.canonical(name)}"]), name
        assert on in ([f"--{name}"], [f"--{LLAMA_CPP.canonical(name)}"]), name
    negatable = {name for name, (_, off) in LLAMA_CPP.bool_spelling.items() if off == [f"--no-{name}"]}
    assert negatable == {LLAMA_CPP.canonical(name) for name in pairs}  # none the binary lacks: `--no-X` it
    # does not know would stop it at start


def test_llama_cpp_every_spelling_of_a_flag_autotuner_acts_on_is_that_flag(llama_server):
    """llama-server takes `-n`, `--predict` and `--n-predict` alike: a task writing `predict: 16k`
    must meet the whole-number check `n-predict` gets, and `kvo: false` must reach the engine as
    --no-kv-offload, not be left out (a false without a known negative form is left out)."""
    help_text = subprocess.run([llama_server, "--help"], capture_output=True, text=True, timeout=60).stdout
    acted_on = (set(VALUE_KINDS["llama.cpp"]) | set(LLAMA_CPP.aliases.values()) | set(LLAMA_CPP.bool_spelling)
                | set(LLAMA_CPP.chosen_in_log) | {LLAMA_CPP.cpu_flag})
    checked = 0
    for line in help_text.splitlines():
        positive, long_seen = [], False  # "-kvo, --kv-offload, -nkvo, --no-kv-offload": those before the negatives
        for spelling in _line_flags(line):
            if spelling.startswith("--no-") or (long_seen and not spelling.startswith("--")):
                break
            positive.append(spelling.lstrip("-"))
            long_seen |= spelling.startswith("--")
        if acted_on & set(positive):
            assert len({LLAMA_CPP.canonical(name) for name in positive}) == 1, positive
            checked += len(positive) > 1
    assert checked >= 15  # the parse found the lines (-n, --predict, --n-predict among them)
    assert LLAMA_CPP.canonical("predict") == LLAMA_CPP.canonical("n") == "n-predict"
    with pytest.raises(TaskError, match=r"'16k' is not a whole number \(--n-predict\)"):
        preflight(parse_task({"name": "t", "model": {"path": "builtin:smollm2"}, "search_space": {"threads": [1]},
                              "engine": {"name": "llama.cpp", "args": {"predict": "16k"}}}))
    assert LLAMA_CPP.flag_argv(LLAMA_CPP.merged({"kvo": False}, {})) == ["--no-kv-offload"]


def test_llama_cpp_on_and_off_reach_every_flag_that_takes_those_words(llama_server):
    """YAML reads `fit: [on, off]` as true/false: a bare `--fit` stops the engine at start, and
    a dropped one runs the engine's default while the results say off."""
    help_text = subprocess.run([llama_server, "--help"], capture_output=True, text=True, timeout=60).stdout
    takes_words = set(re.findall(r"--([a-z-]+) \[on\|off", help_text))
    assert {"flash-attn", "fit"} <= takes_words  # the parse found them
    for name in takes_words:
        assert LLAMA_CPP.flag_argv({name: True}) == [f"--{name}", "on"], name
        assert LLAMA_CPP.flag_argv({name: False}) == [f"--{name}", "off"], name


def test_llama_cpp_false_for_a_flag_without_negative_form_is_left_out():
    assert LLAMA_CPP.flag_argv({"check-tensors": False, "verbose": True}) == ["--verbose"]


def test_vllm_false_is_the_negative_form_for_any_boolean():
    # vLLM builds every boolean engine argument as argparse.BooleanOptionalAction.
    assert VLLM.flag_argv({"enforce-eager": False, "enable-prefix-caching": True}) == [
        "--no-enforce-eager", "--enable-prefix-caching"]


def test_sglang_launch_and_gpu_count():
    flags = SGLANG.merged({}, {"tp": 2, "dp_size": 2, "mem_fraction_static": 0.85, "schedule-policy": "lpm"})
    argv = SGLANG.argv(Launch("/usr/bin/python3", "Qwen/Qwen3-8B", "qwen", "0.0.0.0", 30000), flags)
    assert argv[:4] == ["/usr/bin/python3", "-m", "sglang.launch_server", "--model-path"]
    assert "--tp-size" in argv and argv[argv.index("--tp-size") + 1] == "2"
    assert argv[argv.index("--mem-fraction-static") + 1] == "0.85"
    assert SGLANG.resources(flags) == {"CPU": 1.0, "GPU": 4.0}
    assert SGLANG.resources({}) == {"CPU": 1.0, "GPU": 1.0}
    # Attention DP runs inside the TP group: DeepSeek's `--tp 8 --dp 8 --enable-dp-attention` is one 8-GPU node.
    assert SGLANG.resources(SGLANG.merged({}, {"tp": 8, "dp": 8, "enable-dp-attention": True}))["GPU"] == 8.0
    assert SGLANG.resources(SGLANG.merged({}, {"tp": 8, "attn-dp-size": 4}))["GPU"] == 8.0


def test_vllm_launch_negative_booleans_and_gpu_count():
    flags = VLLM.merged({}, {"tp": 2, "pp": 2, "enable-prefix-caching": False, "max-num-seqs": 128})
    argv = VLLM.argv(Launch("vllm", "meta/llama", "llama", "127.0.0.1", 8000), flags)
    assert argv[:3] == ["vllm", "serve", "meta/llama"]
    assert "--no-enable-prefix-caching" in argv
    assert VLLM.resources(flags)["GPU"] == 4.0
    # Prefill context parallelism multiplies the world too (tp x pp x pcp, then x dp).
    assert VLLM.resources(VLLM.merged({}, {"tp": 2, "pcp": 2, "dp": 2}))["GPU"] == 8.0
    assert "--prefill-context-parallel-size" in VLLM.flag_argv(VLLM.merged({}, {"pcp": 2}))


def test_llama_cpp_claims_its_threads_as_cpus():
    assert LLAMA_CPP.resources({"threads": 2}) == {"CPU": 2.0}
    assert LLAMA_CPP.resources({}, node_cpus=8) == {"CPU": 8.0}


def test_llama_cpp_offloading_layers_claims_a_gpu():
    # Else its engine would be given no GPU (each engine sees only the GPUs its trial holds).
    assert LLAMA_CPP.resources({"threads": 2, "n-gpu-layers": 99}) == {"CPU": 2.0, "GPU": 1.0}
    assert LLAMA_CPP.resources({"threads": 2, "n-gpu-layers": 0}) == {"CPU": 2.0}


@pytest.mark.parametrize("value", ["--api-key", "a b", "x\ny", "-1x"])
def test_values_that_could_smuggle_a_flag_are_refused(value):
    with pytest.raises(ValueError):
        LLAMA_CPP.flag_argv({"alias": value})


def test_negative_numbers_are_values_not_flags():
    assert LLAMA_CPP.flag_argv({"parallel": -1}) == ["--parallel", "-1"]


def test_validate_and_run_refuse_a_flag_the_llama_server_binary_does_not_know(llama_server, tmp_path, monkeypatch, capsys):
    # Passed through, `--ctx-sise` would stop every trial's engine at start: a whole run of failures.
    task = {"name": "typo", "model": {"path": "builtin:smollm2"}, "engine": {"name": "llama.cpp", "binary": llama_server},
            "search_space": {"threads": [1], "ctx-sise": [512, 1024]}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    monkeypatch.chdir(tmp_path)
    for command in ("validate", "run"):
        assert cli.main([command, "task.yaml"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert "search_space.ctx-sise: llama.cpp has no --ctx-sise (its --help); did you mean --ctx-size?" in err
    assert not ray.is_initialized() and not (tmp_path / "results").exists()
    # A flag it knows, under any of its spellings, passes.
    task["search_space"] = {"threads": [1], "c": [512], "no-warmup": [True]}
    check_known_flags(parse_task(task), llama_server)


def test_a_value_the_llama_server_binary_does_not_take_is_refused_and_the_binary_agrees(llama_server, tmp_path,
                                                                                      monkeypatch, capsys):
    """Where llama-server's help lists the only values a flag takes (cache types, split modes), a
    value outside them is refused by `validate` in one line, nearest value named; the binary itself
    refuses the same value at start, so every trial given it would have failed."""
    task = {"name": "typo", "model": {"path": "builtin:smollm2"}, "engine": {"name": "llama.cpp", "binary": llama_server},
            "search_space": {"threads": [1], "ctk": ["f16", "q8"]}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate", "task.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert ("search_space.ctk: 'q8' is not a value llama.cpp's --cache-type-k takes (its --help: f32, f16, bf16, "
            "q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1); did you mean 'q8_0'?") in err
    started = subprocess.run([llama_server, "--cache-type-k", "q8", "--model", str(tmp_path / "none.gguf")],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode != 0 and 'error while handling argument "--cache-type-k"' in started.stderr + started.stdout
    # A fixed flag too, under the task's spelling.
    task["search_space"] = {"threads": [1]}
    task["engine"]["args"] = {"split-mode": "rows"}
    with pytest.raises(TaskError, match=r"^engine.args.split-mode: 'rows' is not a value llama.cpp's --split-mode "
                                        r"takes \(its --help: none, layer, row, tensor\); did you mean 'row'\?$"):
        check_known_flags(parse_task(task), llama_server)
    # What it takes passes; so do flags whose help names some words but takes others too
    # (`--flash-attn [on|off|auto]` also takes "enabled"), and booleans, which the profile spells.
    task["engine"]["args"] = {"split-mode": "layer"}
    task["search_space"] = {"cache-type-k": ["f16", "q8_0"], "flash-attn": ["on", "enabled", True], "threads": [1, 2]}
    check_known_flags(parse_task(task), llama_server)


def test_llama_cpp_runs_a_ubatch_above_its_batch_as_the_batch(llama_server, smollm2, tmp_path):
    """What EngineProfile.effective says the engine runs is what the engine's own log says it runs."""
    flags = {"batch-size": 64, "ubatch-size": 320}
    assert LLAMA_CPP.effective(flags, {"ctx-size": 512}) == {"batch-size": 64, "ubatch-size": 64}
    assert LLAMA_CPP.effective({"ubatch-size": 32}, {"batch-size": 64}) == {"ubatch-size": 32}
    # --log-verbosity 4: the context's sizes are logged
    log = served_log(llama_server, smollm2, tmp_path / "engine.log",
                     {"ctx-size": 512, "parallel": 1, "threads": 1, "log-verbosity": 4} | flags)
    assert re.search(r"n_batch\s*=\s*64\b", log) and re.search(r"n_ubatch\s*=\s*64\b", log), log[-2000:]


def served_log(llama_server, smollm2, log: Path, flags: dict) -> str:
    """The log of llama-server started with `flags`, once its model is loaded."""
    argv = [llama_server, "--model", smollm2, "--host", "127.0.0.1", "--port", str(free_port()),
            *LLAMA_CPP.flag_argv(flags)]
    with open(log, "w") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert until(lambda: "model loaded" in log.read_text() or server.poll() is not None, timeout_s=60)
    finally:
        server.kill()
        server.wait(timeout=30)
    return log.read_text()


def test_what_llama_cpp_chose_itself_is_read_from_its_log_and_runs_the_same_when_pinned(llama_server, smollm2,
                                                                                       tmp_path):
    """The engine defaults' threads and slots depend on the machine: read from the engine's log,
    pinned in the launch line, they run the same (on another machine too)."""
    fixed = {"ctx-size": 512}
    chosen = LLAMA_CPP.chosen_by_engine(served_log(llama_server, smollm2, tmp_path / "defaults.log", fixed), fixed)
    assert set(chosen) == {"threads", "parallel"} and all(value >= 1 for value in chosen.values()), chosen
    pinned_log = served_log(llama_server, smollm2, tmp_path / "pinned.log", fixed | chosen)
    assert LLAMA_CPP.chosen_by_engine(pinned_log, fixed | {"threads": None, "parallel": -1}) == chosen
    assert LLAMA_CPP.chosen_by_engine(pinned_log, fixed | chosen) == {}  # set by the line: not the engine's choice
    # A flag set is not the engine's choice; one set to -1 ("work it out") is, read as it ran.
    log = served_log(llama_server, smollm2, tmp_path / "other.log", fixed | {"threads": 1, "parallel": 2})
    assert LLAMA_CPP.chosen_by_engine(log, fixed | {"threads": 1, "parallel": -1}) == {"parallel": 2}


# Start-up lines as users pasted them (no GPU here to produce them): the scheduler's of SGLang
# 0.5.4.post3 (sglang issue 12726; NGRAM speculative decoding, so 48 slots), SGLang's server_args
# line in its dataclass form (LMCache issue 2400) and in the dict form of SGLang >= 0.5.19,
# vLLM 0.10.2's (vllm PR 24162).
SGLANG_LOG = """\
[2026-01-14 05:25:33] server_args=ServerArgs(model_path='Qwen/Qwen3-14B', tp_size=2, mem_fraction_static=0.835, \
max_running_requests=None, max_queued_requests=None, max_total_tokens=None, chunked_prefill_size=8192, \
max_prefill_tokens=16384, schedule_policy='fcfs', cuda_graph_max_bs=256, enable_dp_attention=False)
[2025-11-06 01:22:13 TP0] Load weight end. type=Qwen3ForCausalLM, dtype=torch.bfloat16, avail mem=70.51 GB
[2025-11-06 01:22:14 TP0] KV Cache is allocated. #tokens: 421472, K size: 28.94 GB, V size: 28.94 GB
[2025-11-06 01:22:14] max_total_num_tokens=421472, chunked_prefill_size=8192, max_prefill_tokens=16384, \
max_running_requests=48, context_len=40960, available_gpu_mem=12.18 GB
"""
VLLM_LOG = """\
(APIServer pid=12) INFO 09-03 16:28:10 [utils.py:328] non-default args: {'model': '/data/Qwen2.5-0.5B/', \
'tensor_parallel_size': 2}
(APIServer pid=12) INFO 09-03 16:28:17 [scheduler.py:222] Chunked prefill is enabled with max_num_batched_tokens=2048.
(EngineCore_0 pid=13) INFO 09-03 16:28:40 [kv_cache_utils.py:849] GPU KV cache size: 922,496 tokens
"""


def test_what_sglang_and_vllm_chose_on_their_gpus_is_read_from_their_start_up_lines():
    assert SGLANG.chosen_by_engine(SGLANG_LOG, {"tp-size": 2}) == {
        "max-running-requests": 48, "chunked-prefill-size": 8192, "mem-fraction-static": 0.835,
        "cuda-graph-max-bs": 256}
    # What the config set is its own, not the engine's choice.
    assert SGLANG.chosen_by_engine(SGLANG_LOG, {"mem-fraction-static": 0.8, "chunked-prefill-size": 4096,
                                                "max-running-requests": 32, "cuda-graph-max-bs": 64}) == {}
    # SGLang >= 0.5.19 prints server_args as a dict.
    dict_form = "[2026-06-28 15:16:45] server_args={'model_path': 'm', 'mem_fraction_static': 0.871, 'cuda_graph_max_bs': 160}"
    assert SGLANG.chosen_by_engine(dict_form, {}) == {"mem-fraction-static": 0.871, "cuda-graph-max-bs": 160}
    # 0.5.23 has only --cuda-graph-max-bs-decode (and -prefill); what it chose is in the resolved
    # cuda_graph_config (written here from its code, no such log seen: server_args.py `resolved_dict`
    # turns the dataclasses into dicts in field order).
    def server_args(decode_max_bs):
        return ("server_args={'mem_fraction_static': 0.8, 'cuda_graph_max_bs_decode': None, 'cuda_graph_config': "
                f"{{'decode': {{'backend': 'full', 'max_bs': {decode_max_bs}, 'bs': None, 'tc_compiler': 'eager'}}, "
                "'prefill': {'backend': 'breakable', 'max_bs': 2048, 'bs': None}}}")
    assert SGLANG.chosen_by_engine(server_args(256), {"mem-fraction-static": 0.8}) == {"cuda-graph-max-bs-decode": 256}
    assert SGLANG.chosen_by_engine(server_args(None), {"mem-fraction-static": 0.8}) == {}  # graphs off
    assert SGLANG.chosen_by_engine(server_args(64), {"mem-fraction-static": 0.8, "cuda-graph-max-bs-decode": 64}) == {}
    # With attention DP each rank logs its share of the requests and of the chunk: the flag is the
    # total (pinned at 2048, the chunk would be divided again, to 2048 // 4).
    for attention_dp in ({"dp-size": 4, "enable-dp-attention": True}, {"attn-dp-size": 4}):
        chosen = SGLANG.chosen_by_engine(SGLANG_LOG, attention_dp)
        assert (chosen["max-running-requests"], chosen["chunked-prefill-size"]) == (192, 32768)
    assert VLLM.chosen_by_engine(VLLM_LOG, {"tensor-parallel-size": 2}) == {"max-num-batched-tokens": 2048}
    assert VLLM.chosen_by_engine(VLLM_LOG, {"max-num-batched-tokens": 4096}) == {}
    assert SGLANG.chosen_by_engine("", {}) == {} and VLLM.chosen_by_engine(SGLANG_LOG, {}) == {}


DATA = Path(__file__).resolve().parents[1] / "data"


def python_with(tmp_path, path) -> str:
    """A python whose imports see `path` first: the launcher a task's engine.binary names."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!{sys.executable}\nimport os, sys\nos.environ['PYTHONPATH'] = {str(path)!r}\n"
                       "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def test_validate_refuses_a_flag_the_installed_sglang_does_not_know(tmp_path, monkeypatch, capsys):
    """SGLang's own --help is asked (argparse's, here a stand-in's: no GPU, no SGLang on this machine)."""
    python = python_with(tmp_path, DATA / "standin_sglang")
    task = {"name": "typo", "model": {"path": "org/model"}, "engine": {"name": "sglang", "binary": python},
            "search_space": {"tp": [1], "mem-fraction-statc": [0.8, 0.9]}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate", "task.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert ("search_space.mem-fraction-statc: sglang has no --mem-fraction-statc (its --help); "
            "did you mean --mem-fraction-static?") in err
    # Every spelling of a flag it lists passes: the alias (tp), the long name, a store_true.
    task["search_space"] = {"tensor-parallel-size": [1, 2], "dp_size": [1], "enable-mixed-chunk": [True, False],
                            "schedule-policy": ["lpm", "fcfs"]}
    check_known_flags(parse_task(task))
    # A value its argparse choices do not hold: every trial given it would exit at start.
    task["search_space"] = {"tp": [1], "schedule-policy": ["lpm", "dfs"]}
    with pytest.raises(TaskError, match=r"^search_space.schedule-policy: 'dfs' is not a value sglang's --schedule-policy "
                                        r"takes \(its --help: lpm, random, fcfs, dfs-weight, lof, priority\); "
                                        r"did you mean 'dfs-weight'\?$"):
        check_known_flags(parse_task(task))
    # A python without SGLang cannot say: the flags pass through, as on a laptop preparing a GPU run.
    task["engine"]["binary"] = sys.executable
    task["search_space"] = {"mem-fraction-statc": [0.8]}
    check_known_flags(parse_task(task))


@pytest.mark.parametrize("style", ["grouped", "search", "argparse"])
def test_a_flag_vllm_serve_does_not_list_is_refused(tmp_path, monkeypatch, style):
    """Each generation of vLLM's help (tests/data/vllm_help_standin.py): every flag it has passes."""
    monkeypatch.setenv("STANDIN_VLLM_HELP", style)
    task = {"name": "typo", "model": {"path": "org/model"},
            "engine": {"name": "vllm", "binary": str(DATA / "vllm_help_standin.py")},
            "search_space": {"tp": [1, 2], "enable-prefix-caching": [True, False], "max-num-seq": [64, 128]}}
    with pytest.raises(TaskError, match=r"search_space.max-num-seq: vllm has no --max-num-seq \(its --help\); "
                                        r"did you mean --max-num-seqs\?"):
        check_known_flags(parse_task(task))
    task["search_space"]["max-num-seqs"] = task["search_space"].pop("max-num-seq")
    task["search_space"]["scheduling-policy"] = ["fcfs", "priorty"]
    with pytest.raises(TaskError, match=r"search_space.scheduling-policy: 'priorty' is not a value vllm's "
                                        r"--scheduling-policy takes \(its --help: fcfs, priority\)"):
        check_known_flags(parse_task(task))
    task["search_space"]["scheduling-policy"] = ["fcfs", "priority"]
    task["engine"]["args"] = {"compilation-config": '{"level":3}'}
    check_known_flags(parse_task(task))


def test_on_kubernetes_the_flags_are_the_images_not_checked_against_an_engine_here(tmp_path):
    python = python_with(tmp_path, DATA / "standin_sglang")
    task = {"name": "image", "model": {"name": "org/model", "tokenizer": "org/model"},
            "engine": {"name": "sglang", "binary": python},
            "deployment": {"backend": "ome", "namespace": "ns", "model": "m", "runtime": "r", "gpu_budget": 2},
            "search_space": {"tp-size": [1, 2], "enable-new-feature": [True]}}
    check_known_flags(parse_task(task))


@pytest.mark.parametrize("line, spellings", [
    ("-c,    --ctx-size N                     size of the prompt context", ["-c", "--ctx-size"]),
    ("-kvo,  --kv-offload, -nkvo, --no-kv-offload   whether to offload", ["-kvo", "--kv-offload", "-nkvo",
                                                                         "--no-kv-offload"]),
    ("  --tp-size TP_SIZE, --tensor-parallel-size TP_SIZE", ["--tp-size", "--tensor-parallel-size"]),
    ("  --lora-paths LORA_PATHS [LORA_PATHS ...], --lora LORA_PATHS [LORA_PATHS ...]  The list of LoRA adapters",
     ["--lora-paths", "--lora"]),
    ("  --schedule-policy {lpm,random,fcfs}  The scheduling policy -- of the requests", ["--schedule-policy"]),
    ("  --speculative-algorithm={EAGLE,NGRAM}", ["--speculative-algorithm"]),
    ("                        [--enable-mixed-chunk] [--disable-radix-cache]", []),  # usage, wrapped
    ("                        -1 means no limit", ["-1"]),  # a description line: one more name, never fewer
])
def test_every_spelling_a_help_line_lists_is_read(line, spellings):
    assert _line_flags(line) == spellings


@pytest.mark.parametrize("line, choices", [
    ("  --schedule-policy {lpm,random,fcfs}  The scheduling policy", ("lpm", "random", "fcfs")),
    ("  --speculative-algorithm={EAGLE,NGRAM}", ("EAGLE", "NGRAM")),
    ("  --kv-cache-dtype [{auto,fp8}]  optional value", ("auto", "fp8")),
    ("-sm,   --split-mode {none,layer,row,tensor}", ("none", "layer", "row", "tensor")),
    ("-fa,   --flash-attn [on|off|auto]       set Flash Attention use", ()),  # takes "enabled" too
    ("  --compilation-config COMPILATION_CONFIG  e.g. {\"level\":3}", ()),  # in the description
    ("                        [--schedule-policy {lpm,random}]", ()),  # usage, wrapped
])
def test_the_values_a_help_line_limits_its_flag_to_are_read(line, choices):
    assert _line_choices(line) == choices


def test_an_ome_task_is_checked_against_the_catalog_of_its_engines_flags(tmp_path, monkeypatch, capsys):
    """On OME the engine is the cluster's image: its --help cannot be asked here. What autotuner
    knows of SGLang's flags (cluster/flag_catalog.py) still refuses a value of the wrong type or out
    of range, and points out a name or a choice it does not know, with the nearest it does."""
    task = {"name": "ome", "model": {"name": "llama", "tokenizer": "org/llama"},
            "engine": {"name": "sglang", "args": {"tp-size": 1}},
            "deployment": {"backend": "ome", "namespace": "tuning", "model": "llama", "runtime": "srt-llama",
                           "gpu_budget": 8},
            "search_space": {"mem-fraction-statc": [0.8, 0.9], "schedule-policy": ["lpm", "fcsf"],
                             "max-running-requests": [64, 128], "chunked-prefill-size": [-1, 4096],
                             "enable-mixed-chunk": [True, False], "max-prefill-tokens": ["16k"],
                             "cuda-graph-max-bs": [64, 128]}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate", "task.yaml"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        # 0.5.23 has only the -decode and -prefill ones (argparse: "ambiguous option"); earlier releases had it.
        "task.yaml: note: search_space.cuda-graph-max-bs: sglang has no --cuda-graph-max-bs that autotuner knows of "
        "(SGLang 0.5.23); did you mean --cuda-graph-max-bs-decode? (left to the engine to judge at start)",
        "task.yaml: note: search_space.mem-fraction-statc: sglang has no --mem-fraction-statc that autotuner knows "
        "of (SGLang 0.5.23); did you mean --mem-fraction-static? (left to the engine to judge at start)",
        "task.yaml: note: search_space.schedule-policy: 'fcsf' is not one of SGLang 0.5.23's values for "
        "--schedule-policy (lpm, random, fcfs, dfs-weight, lof, priority, routing-key, hrrn, shortest-prefill-first); "
        "did you mean 'fcfs'? (left to the engine to judge at start)"]
    for space, expected in [({"mem-fraction-static": [0.5, 1.0]}, "search_space.mem-fraction-static: 1.0 is out of "
                             "range for sglang's --mem-fraction-static (above 0 and below 1)"),
                            ({"max-running-requests": {"type": "int", "min": 0, "max": 256, "step": 64}},
                             "search_space.max-running-requests: 0 is out of range for sglang's --max-running-requests "
                             "(at least 1)"),
                            ({"enable-mixed-chunk": ["yes"]}, "search_space.enable-mixed-chunk: 'yes' is not true or "
                             "false (--enable-mixed-chunk)")]:
        (tmp_path / "task.yaml").write_text(yaml.safe_dump(task | {"search_space": space}))
        assert cli.main(["validate", "task.yaml"]) == 2
        assert capsys.readouterr().err == f"autotuner: error: task.yaml: {expected}\n"



def test_validate_says_which_searched_sglang_flags_would_measure_nothing_under_genai_bench(tmp_path, monkeypatch,
                                                                                          capsys):
    """Each trial takes minutes of GPU time: a dimension whose values all run alike under this
    tool's load doubles the trials to measure noise."""
    task = {"name": "ome", "model": {"name": "llama", "tokenizer": "org/llama"},
            "engine": {"name": "sglang", "args": {"tp-size": 1}},
            "deployment": {"backend": "ome", "namespace": "tuning", "model": "llama", "runtime": "srt-llama",
                           "gpu_budget": 8},
            "search_space": {"schedule_conservativeness": [0.3, 1.0, 1.5], "num-continuous-decode-steps": [1, 4],
                             "max-running-requests": [64, 128]}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate", "task.yaml"]) == 0
    assert capsys.readouterr().err.splitlines() == [  # in the file's order (safe_dump sorts the keys)
        "task.yaml: note: search_space.num-continuous-decode-steps: SGLang 0.5.23 declares it but reads it nowhere: "
        "its values will measure alike",
        "task.yaml: note: search_space.schedule_conservativeness: SGLang 0.5.23 uses it only to guess how early "
        "requests stop, and genai-bench's requests never stop early (ignore_eos): its values will measure alike"]


def test_a_searched_flag_the_catalog_does_not_know_is_pointed_out_even_far_from_any_it_knows():
    """Each searched flag multiplies the trials: one vLLM does not have fails every config given it,
    after minutes of start-up on a GPU. Fixed args hold many other flags: noted only near a known one."""
    from llm_autotuner.cluster.flag_catalog import check

    assert check("vllm", "search_space.gpu-mem-util", "gpu-mem-util", [0.8], asked_engine=False) == [
        "search_space.gpu-mem-util: --gpu-mem-util is not among the vLLM 0.33.0 tuning flags autotuner's catalog holds "
        "(the nearest: --gpu-memory-utilization): its name and values are not checked (left to the engine to judge at "
        "start)"]
    assert check("vllm", "search_space.max-num-seq", "max-num-seq", [8], asked_engine=False) == [
        "search_space.max-num-seq: vllm has no --max-num-seq that autotuner knows of (vLLM 0.33.0); did you mean "
        "--max-num-seqs? (left to the engine to judge at start)"]
    assert check("vllm", "search_space.bogus", "bogus", [1, 2], asked_engine=False) == [
        "search_space.bogus: --bogus is not among the vLLM 0.33.0 tuning flags autotuner's catalog holds: its name and "
        "values are not checked (left to the engine to judge at start)"]
    assert check("vllm", "engine.args.trust-remote-code", "trust-remote-code", True, asked_engine=False) == []
    assert check("vllm", "search_space.bogus", "bogus", [1, 2], asked_engine=True) == []  # its --help said

def test_the_catalog_refuses_what_no_engine_version_takes_even_where_the_engine_is_asked(tmp_path):
    """vLLM's own --help (a stand-in) lists --gpu-memory-utilization, but says nothing of its range."""
    task = {"name": "v", "model": {"path": "org/model"},
            "engine": {"name": "vllm", "binary": str(DATA / "vllm_help_standin.py")},
            "search_space": {"gpu-memory-utilization": [0.9, 1.5]}, "results_dir": str(tmp_path / "results")}
    with pytest.raises(TaskError, match=r"^search_space.gpu-memory-utilization: 1.5 is out of range for vllm's "
                                        r"--gpu-memory-utilization \(above 0 and at most 1\)$"):
        preflight(parse_task(task))
    task["search_space"]["gpu-memory-utilization"] = [0.9, 1.0]
    assert preflight(parse_task(task)) == []  # asked of its --help: nothing left to point out


OME_SGLANG = {"name": "ome", "model": {"name": "llama", "tokenizer": "org/llama"}, "engine": {"name": "sglang"},
              "deployment": {"backend": "ome", "namespace": "tuning", "model": "llama", "runtime": "srt-llama",
                             "gpu_budget": 8}}


@pytest.mark.parametrize("engine, args, space, said", [
    ("sglang", {"tp-size": 1, "page-size": 64}, {"chunked-prefill-size": [-1, 4096, 1000]},
     "one sets --chunked-prefill-size 1000, not a multiple of --page-size 64, which SGLang refuses at start"),
    ("sglang", {"tp-size": 1}, {"chunked-prefill-size": [2048, 4096], "page-size": [16, 64]}, None),
    # FlashMLA runs with pages of 64 whatever --page-size says, unset too: SGLang checks the chunk against that.
    ("sglang", {"tp-size": 1, "attention-backend": "flashmla"}, {"chunked-prefill-size": [4096, 4000]},
     "one sets --chunked-prefill-size 4000, not a multiple of the page size 64 flashmla runs with, which SGLang "
     "refuses at start"),
    ("sglang", {"tp-size": 1, "page-size": 16}, {"chunked-prefill-size": [2048, 4080],
                                                 "decode-attention-backend": ["fa3", "trtllm_mla"]},
     "one sets --chunked-prefill-size 4080, not a multiple of the page size 64 trtllm_mla runs with, which SGLang "
     "refuses at start"),
    ("sglang", {"tp-size": 1, "page-size": 32, "attention-backend": "trtllm_mla"}, {"chunked-prefill-size": [4064]},
     None),
    # intel_xpu as the prefill or decode backend (each --attention-backend when unset) runs pages of 128
    # unless 64 or 128 are set (16 and 32 too for MLA models: judged as kept).
    ("sglang", {"tp-size": 1, "attention-backend": "intel_xpu"}, {"chunked-prefill-size": [4096, 4160]},
     "one sets --chunked-prefill-size 4160, not a multiple of the page size 128 intel_xpu runs with, which SGLang "
     "refuses at start"),
    ("sglang", {"tp-size": 1, "page-size": 8, "attention-backend": "intel_xpu"},
     {"chunked-prefill-size": [4104], "prefill-attention-backend": ["triton"],
      "decode-attention-backend": ["triton", "intel_xpu"]},
     "one sets --chunked-prefill-size 4104, not a multiple of the page size 128 intel_xpu runs with, which SGLang "
     "refuses at start"),
    ("sglang", {"tp-size": 1, "page-size": 16}, {"chunked-prefill-size": [4096, 4112],
                                                 "decode-attention-backend": ["intel_xpu"]}, None),
    # fa4 runs pages of 128 on SM100 GPUs (models without MLA) and the page set elsewhere: skipped only
    # when refused with both (ones refused with one only: test_configs_refused_on_some_gpus_only...).
    ("sglang", {"tp-size": 1, "attention-backend": "fa4", "page-size": 64}, {"chunked-prefill-size": [4096, 1000]},
     "one sets --chunked-prefill-size 1000, not a multiple of --page-size 64, which SGLang refuses at start"),
    ("sglang", {"tp-size": 1, "attention-backend": "fa4", "page-size": 256}, {"chunked-prefill-size": [4096, 4224]},
     None),
    ("sglang", {"tp-size": 1}, {"attention-backend": ["fa3", "trtllm_mla"], "kv-cache-dtype": ["auto", "bfloat16"]},
     "one sets --kv-cache-dtype bfloat16 with the trtllm_mla attention backend, which SGLang refuses at start "
     "(fp8_e4m3, bf16 or auto only)"),
    ("sglang", {"tp-size": 1, "attention-backend": "trtllm_mla"}, {"kv-cache-dtype": ["auto", "bf16", "fp8_e4m3"]},
     None),
    ("sglang", {"tp-size": 1, "decode-attention-backend": "cutedsl_mla"}, {"kv-cache-dtype": ["bfloat16", "fp8_e5m2"]},
     "one sets --kv-cache-dtype fp8_e5m2 with the cutedsl_mla attention backend, which SGLang refuses at start "
     "(fp8_e4m3, bf16, bfloat16 or auto only)"),
    ("sglang", {"tp-size": 1}, {"prefill-attention-backend": ["fa3", "cutedsl_mla"]},
     "one sets --prefill-attention-backend cutedsl_mla, which SGLang refuses at start (it decodes only)"),
    ("sglang", {"tp-size": 1, "disable-cuda-graph-padding": True}, {"enable-torch-compile": [True, False]},
     "one sets --enable-torch-compile with --disable-cuda-graph-padding, which SGLang refuses at start"),
    ("sglang", {"tp-size": 1}, {"enable-torch-compile": [True, False], "disable-cuda-graph-padding": [False]}, None),
    # DP attention divides the chunk by dp-size before SGLang checks it against the page size.
    ("sglang", {"tp-size": 2, "dp-size": 2, "enable-dp-attention": True, "page-size": 64},
     {"chunked-prefill-size": [4096, 4160]},
     "one sets --chunked-prefill-size 4160, which --dp-size 2 with --enable-dp-attention divides to 2080, not a "
     "multiple of --page-size 64, which SGLang refuses at start"),
    ("sglang", {"tp-size": 4, "attn-dp-size": 4, "page-size": 64}, {"chunked-prefill-size": [4096, 8320]},
     "one sets --chunked-prefill-size 8320, which --attn-dp-size 4 divides to 2080, not a multiple of --page-size 64, "
     "which SGLang refuses at start"),
    ("sglang", {"tp-size": 2, "dp-size": 2, "page-size": 64}, {"chunked-prefill-size": [4096, 4160]}, None),
    ("sglang", {"tp-size": 2, "enable-dp-attention": True}, {"dp-size": [1, 2, 4]},
     "one sets --tp-size 2, not a multiple of --dp-size 4 with --enable-dp-attention, which SGLang refuses at start"),
    ("sglang", {"tp-size": 2}, {"dp-size": [1, 2, 4]}, None),  # DP without DP attention: any tp
    ("sglang", {"tp-size": 4}, {"attn-dp-size": [1, 2, 3]},
     "one sets --tp-size 4, not a multiple of --attn-dp-size 3, which SGLang refuses at start"),
    ("sglang", {"tp-size": 2, "attn-dp-size": 2}, {"dp-size": [1, 2]},
     "one sets --attn-dp-size 2 with --dp-size 2 (attention DP beside data-parallel replicas), which SGLang refuses "
     "at start"),
    ("sglang", {"tp-size": 1}, {"schedule-policy": ["fcfs", "priority"]},
     "one sets --schedule-policy priority, which SGLang 0.5.23 lists but refuses at start (priority scheduling is "
     "--enable-priority-scheduling with fcfs or lof)"),
    ("sglang", {"tp-size": 1, "enable-priority-scheduling": True}, {"schedule-policy": ["fcfs", "lof", "lpm"]},
     "one sets --enable-priority-scheduling with --schedule-policy lpm, which SGLang refuses at start (fcfs or lof "
     "only)"),
    ("sglang", {"tp-size": 1, "disable-radix-cache": True}, {"schedule-policy": ["fcfs", "shortest-prefill-first"]},
     "one sets --schedule-policy shortest-prefill-first with --disable-radix-cache, which SGLang refuses at start (the "
     "policy needs the prefix cache)"),
    ("vllm", {"tensor-parallel-size": 1},
     {"max-num-seqs": [64, 512], "max-num-batched-tokens": {"type": "int", "min": 256, "max": 8192, "step": 256}},
     "one sets --max-num-batched-tokens 256 below --max-num-seqs 512, which vLLM refuses at start"),
    ("vllm", {"tensor-parallel-size": 1, "max-num-seqs": 256}, {"max-num-batched-tokens": [2048, 8192]}, None),
    ("vllm", {"tensor-parallel-size": 1, "max-model-len": 4096, "enable-chunked-prefill": False},
     {"max-num-batched-tokens": [2048, 8192]},
     "one sets --max-num-batched-tokens 2048 below --max-model-len 4096 with chunked prefill off, which vLLM refuses "
     "at start"),
    ("vllm", {"tensor-parallel-size": 1, "max-model-len": 4096},
     {"max-num-batched-tokens": [2048, 8192], "enable-chunked-prefill": [True]}, None),
    ("vllm", {"tensor-parallel-size": 1, "dtype": "half"}, {"kv-cache-dtype": ["auto", "float16", "bfloat16"]},
     "one sets --kv-cache-dtype bfloat16 with --dtype half, which vLLM refuses at start (a float KV cache must be "
     "the model's dtype)"),
    ("vllm", {"tensor-parallel-size": 1}, {"kv-cache-dtype": ["auto", "float16", "bfloat16"]}, None),  # auto: the model's
    ("vllm", {"tensor-parallel-size": 1, "dtype": "bfloat16"}, {"kv-cache-dtype": ["auto", "bfloat16", "float16"]},
     "one sets --kv-cache-dtype float16 with --dtype bfloat16, which vLLM refuses at start (a float KV cache must be "
     "the model's dtype)"),
    ("vllm", {"tensor-parallel-size": 1, "dtype": "bfloat16"}, {"kv-cache-dtype": ["auto", "bfloat16", "fp8"]}, None),
])
def test_configs_whose_flags_the_engine_refuses_together_are_pointed_out(tmp_path, monkeypatch, capsys, engine,
                                                                         args, space, said):
    """Each value fits its flag, but some pairs the engine will not start with: validate says that
    such configs will be skipped (cluster/flag_rules.py), naming one."""
    task = OME_SGLANG | {"engine": {"name": engine, "args": args}, "search_space": space}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate", "task.yaml"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert notes == ([f"task.yaml: note: search_space: some configs are skipped as infeasible, not deployed: {said}"]
                     if said else [])


@pytest.mark.parametrize("engine, args, space, said", [
    ("vllm", {}, {"max-num-seqs": [256, 4096]},
     "search_space: a config sets --max-num-seqs 4096 and leaves --max-num-batched-tokens to vLLM, which chooses "
     "2048 on GPUs under 70 GiB and on A100s and then refuses to start there (fewer tokens per step than sequences); "
     "--max-num-batched-tokens 4096 or more starts on any GPU"),
    ("vllm", {"max-num-seqs": 3000}, {"gpu-memory-utilization": [0.8, 0.9]},
     "engine.args: every config sets --max-num-seqs 3000 and leaves --max-num-batched-tokens to vLLM, which chooses "
     "2048 on GPUs under 70 GiB and on A100s and then refuses to start there (fewer tokens per step than sequences); "
     "--max-num-batched-tokens 3000 or more starts on any GPU"),
    ("vllm", {"performance-mode": "throughput"}, {"max-num-seqs": [256, 3000]}, None),  # it doubles the choice: 4096
    # chunked prefill off: then at least max-model-len, unknown here
    ("vllm", {"enable-chunked-prefill": False}, {"max-num-seqs": [256, 4096]}, None),
    # set: the rule that skips judges it
    ("vllm", {}, {"max-num-seqs": [256, 4096], "max-num-batched-tokens": [8192]}, None),
    ("vllm", {}, {"max-num-seqs": [256, 2048]}, None),
    ("sglang", {"attention-backend": "fa4", "page-size": 64}, {"chunked-prefill-size": [4096, 4160]},
     "search_space: a config sets --chunked-prefill-size 4160, not a multiple of the page size 128 fa4 runs with on "
     "SM100 GPUs (B200, GB200) for models without MLA, which SGLang refuses at start there"),
    ("sglang", {"attention-backend": "fa4", "page-size": 256}, {"chunked-prefill-size": [4096, 4224]},
     "search_space: a config sets --chunked-prefill-size 4224, not a multiple of --page-size 256, which SGLang "
     "refuses at start except on SM100 GPUs (B200, GB200) for models without MLA, where fa4 runs pages of 128"),
    ("sglang", {"decode-attention-backend": "fa4", "chunked-prefill-size": 4160}, {"mem-fraction-static": [0.8, 0.9]},
     "engine.args: every config sets --chunked-prefill-size 4160, not a multiple of the page size 128 fa4 runs with "
     "on SM100 GPUs (B200, GB200) for models without MLA, which SGLang refuses at start there"),
    # EAGLE with more than one draft token per step keeps the page set (1: unset), on SM100 too.
    ("sglang", {"attention-backend": "fa4", "speculative-eagle-topk": 4}, {"chunked-prefill-size": [4096, 4160]},
     None),
    ("sglang", {"attention-backend": "fa3"}, {"chunked-prefill-size": [4096, 4160]}, None),
])
def test_configs_refused_on_some_gpus_only_are_said_and_run(tmp_path, monkeypatch, capsys, engine, args, space,
                                                          said):
    """vLLM chooses its tokens per step from the GPU and refuses a --max-num-seqs above them: a
    config that sets max-num-seqs and leaves the tokens to vLLM starts on an H100 and not on an
    A100. SGLang's fa4 runs pages of 128 on B200s and the page set elsewhere. validate says so;
    such a config is not skipped (it may start)."""
    gpus = {"vllm": {"tensor-parallel-size": 1}, "sglang": {"tp-size": 1}}[engine]
    task = OME_SGLANG | {"engine": {"name": engine, "args": gpus | args}, "search_space": space,
                         "search": {"algorithm": "grid", "baseline": False}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate", "task.yaml"]) == 0
    out, err = capsys.readouterr()
    notes = [line for line in err.splitlines() if re.match(r"task.yaml: note: (search_space|engine.args): (a|every) "
                                                            r"config ", line)]
    assert notes == ([f"task.yaml: note: {said}"] if said else [])
    assert "skipped" not in err
    assert f"; {math.prod(len(values) for values in space.values())} searched trials" in out


def test_sglang_configs_it_runs_alike_are_one_config(tmp_path, monkeypatch, capsys):
    """SGLang starts with lpm, dfs-weight or hrrn and the radix cache off, and schedules FCFS
    without a word: such a config is the FCFS one, run once and reported as fcfs."""
    assert SGLANG.effective({"schedule-policy": "lpm"}, {"disable-radix-cache": True}) == {"schedule-policy": "fcfs"}
    assert SGLANG.effective({"schedule-policy": "hrrn", "disable-radix-cache": True}, {}) == {
        "schedule-policy": "fcfs", "disable-radix-cache": True}
    assert SGLANG.effective({"schedule-policy": "lpm", "disable_radix_cache": False}, {}) == {
        "schedule-policy": "lpm", "disable_radix_cache": False}
    assert SGLANG.effective({"schedule-policy": "lof"}, {"disable-radix-cache": True}) == {"schedule-policy": "lof"}
    assert SGLANG.effective({"schedule-policy": None}, {"disable-radix-cache": True}) == {"schedule-policy": None}
    # With priority scheduling SGLang refuses lpm before it would adjust it (a rule): not fcfs then.
    assert SGLANG.effective({"schedule-policy": "lpm"}, {"disable-radix-cache": True,
                                                        "enable-priority-scheduling": True}) == {"schedule-policy": "lpm"}
    # Pipeline parallelism turns the overlap scheduler off (with a warning): pp 2 runs alike either way.
    assert SGLANG.effective({"pp-size": 2, "disable-overlap-schedule": False}, {}) == {
        "pp-size": 2, "disable-overlap-schedule": True}
    assert SGLANG.effective({"pp-size": 1, "disable-overlap-schedule": False}, {}) == {
        "pp-size": 1, "disable-overlap-schedule": False}
    # enable-dp-attention only turns a dp-size above 1 into attn-dp-size (when that is 1), then is off.
    assert SGLANG.effective({"enable-dp-attention": True}, {"tp-size": 2}) == {"enable-dp-attention": False}
    assert SGLANG.effective({"enable-dp-attention": True}, {"tp-size": 2, "attn-dp-size": 2}) == {
        "enable-dp-attention": False}
    assert SGLANG.effective({"enable-dp-attention": True}, {"tp-size": 2, "dp-size": 2}) == {"enable-dp-attention": True}
    # torch-compile-max-bs picks the batch sizes torch.compile compiles: nothing without it.
    assert SGLANG.effective({"torch-compile-max-bs": 16}, {}) == {"torch-compile-max-bs": None}
    assert SGLANG.effective({"torch-compile-max-bs": 16}, {"enable-torch-compile": True}) == {"torch-compile-max-bs": 16}
    # Some attention backends run their own page size (arg_groups/overrides.py, with a warning).
    assert SGLANG.effective({"page-size": 16}, {"attention-backend": "flashmla"}) == {"page-size": 64}
    assert SGLANG.effective({"page-size": 32}, {"attention-backend": "trtllm_mla"}) == {"page-size": 32}
    assert SGLANG.effective({"page-size": 1}, {"decode-attention-backend": "trtllm_mla"}) == {"page-size": 64}
    assert SGLANG.effective({"page-size": 128, "prefill-attention-backend": "trtllm_mha"}, {}) == {
        "page-size": 128, "prefill-attention-backend": "trtllm_mha"}
    assert SGLANG.effective({"page-size": 8}, {"prefill-attention-backend": "flashmla"}) == {"page-size": 8}  # decode's
    assert SGLANG.effective({"page-size": 16}, {"attention-backend": "fa3"}) == {"page-size": 16}
    assert SGLANG.effective({"page-size": 8}, {"attention-backend": "intel_xpu"}) == {"page-size": 128}
    # fa4 forces pages of 128 on SM100 GPUs only: elsewhere each page runs as set.
    assert SGLANG.effective({"page-size": 8}, {"attention-backend": "fa4"}) == {"page-size": 8}
    # FlashAttention 3 takes no fp8_e5m2 cache: SGLang runs Triton's attention instead (a warning).
    assert SGLANG.effective({"attention-backend": "fa3", "kv-cache-dtype": "fp8_e5m2"}, {}) == {
        "attention-backend": "triton", "kv-cache-dtype": "fp8_e5m2"}
    assert SGLANG.effective({"attention-backend": "fa3"}, {"kv-cache-dtype": "fp8_e4m3"}) == {
        "attention-backend": "fa3"}
    # A grid of 3 policies x the cache on and off is 5 configs: lpm without the cache is fcfs without it.
    space = {"schedule-policy": ["fcfs", "lpm", "lof"], "disable-radix-cache": [True, False]}
    task = OME_SGLANG | {"engine": {"name": "sglang", "args": {"tp-size": 1}}, "search_space": space,
                         "search": {"algorithm": "grid", "baseline": False}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate", "task.yaml"]) == 0
    assert "; 5 searched trials" in capsys.readouterr().out





def test_the_gpu_budget_is_judged_at_the_smallest_and_largest_claims_of_the_space(tmp_path, monkeypatch, capsys):
    """Switches count too: with enable-dp-attention SGLang's dp-size claims no GPUs of its own."""
    monkeypatch.chdir(tmp_path)
    budget = {"backend": "ome", "namespace": "tuning", "model": "llama", "runtime": "srt-llama", "gpu_budget": 4}
    for args, space, code, said in (
            ({"tp-size": 4, "dp-size": 2}, {"enable-dp-attention": [False, True]}, 0,
             "note: search_space: some configs are skipped as infeasible, not deployed: one needs 8 ome_gpu where the "
             "deployment offers 4"),
            ({"tp-size": 4}, {"enable-dp-attention": [True, False], "dp-size": [1, 2]}, 0,
             "note: search_space: some configs are skipped as infeasible, not deployed: one needs 8 ome_gpu where the "
             "deployment offers 4"),
            ({"tp-size": 4, "dp-size": 2}, {"enable-dp-attention": [False]}, 2,
             "error: task.yaml: search_space: even its smallest config needs 8 GPUs; deployment.gpu_budget is 4")):
        task = OME_SGLANG | {"engine": {"name": "sglang", "args": args}, "search_space": space, "deployment": budget}
        (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
        assert cli.main(["validate", "task.yaml"]) == code
        assert said in capsys.readouterr().err, (args, space)

def test_vllm_float_kv_cache_must_be_the_dtype_the_task_sets():
    from llm_autotuner.cluster.flag_rules import conflict

    for dtype, refused in (("float32", ("float16", "bfloat16")), ("float", ("float16", "bfloat16")),
                           ("half", ("bfloat16",)), ("bfloat16", ("float16",)), ("auto", ())):
        for cache in ("auto", "float16", "bfloat16", "fp8"):
            said = conflict("vllm", {"kv-cache-dtype": cache, "dtype": dtype})
            assert (said is not None) == (cache in refused), (dtype, cache, said)

def test_vllm_configs_it_runs_alike_are_one_config(tmp_path, monkeypatch, capsys):
    """vLLM 0.33.0: -O3 is -O2's table; enforce-eager captures no CUDA graphs, so the capture size,
    interactivity and the compiling levels change nothing; a capture size runs as the largest size
    it captures; throughput mode only doubles defaults. Such configs are one, reported as they ran."""
    assert VLLM.effective({"optimization-level": 3}, {}) == {"optimization-level": 2}
    assert VLLM.effective({"optimization-level": 1}, {}) == {"optimization-level": 1}
    eager = {"optimization-level": 3, "max-cudagraph-capture-size": 512, "performance-mode": "interactivity"}
    assert VLLM.effective(eager, {"enforce-eager": True}) == {
        "optimization-level": 2, "max-cudagraph-capture-size": None, "performance-mode": "balanced"}
    assert VLLM.effective({"optimization-level": 0}, {"enforce-eager": True}) == {"optimization-level": 0}
    # A level the task fixes is not what runs when a searched one is dropped: 1 runs as 2, passed.
    assert VLLM.effective({"optimization-level": 1}, {"enforce-eager": True, "optimization-level": 0}) == {
        "optimization-level": 2}
    assert VLLM.effective(eager, {"enforce-eager": False}) == {
        "optimization-level": 2, "max-cudagraph-capture-size": 512, "performance-mode": "interactivity"}
    # Captured sizes: 1, 2, 4, steps of 8 to 248, of 16 from 256, and the tokens per step when <= the size.
    sizes = {100: 96, 7: 4, 250: 248, 300: 288, 8192: 8192, 9000: 8192}
    for size, ran in sizes.items():
        assert VLLM.effective({"max-cudagraph-capture-size": size}, {"max-num-batched-tokens": 8192}) == {
            "max-cudagraph-capture-size": ran}, size
    assert VLLM.effective({"max-cudagraph-capture-size": 7, "performance-mode": "interactivity"},
                          {"max-num-batched-tokens": 8192})["max-cudagraph-capture-size"] == 7  # every size to 32
    assert VLLM.effective({"max-cudagraph-capture-size": 100}, {}) == {"max-cudagraph-capture-size": 100}  # tokens unknown
    assert VLLM.effective({"max-cudagraph-capture-size": 100, "optimization-level": 0},
                          {"max-num-batched-tokens": 8192})["max-cudagraph-capture-size"] is None  # no graphs at -O0
    # Capture sizes told in other flags must agree with it (else vLLM refuses it): kept as given.
    for told in ({"cudagraph-capture-sizes": [1, 2, 100]}, {"compilation-config": '{"cudagraph_mode": "FULL"}'},
                 {"cc.cudagraph_mode": "FULL"}):
        assert VLLM.effective({"max-cudagraph-capture-size": 100}, told | {"max-num-batched-tokens": 8192}) == {
            "max-cudagraph-capture-size": 100}, told
        assert VLLM.effective({"max-cudagraph-capture-size": 100}, told | {"optimization-level": 0}) == {
            "max-cudagraph-capture-size": 100}, told
        assert VLLM.effective({"max-cudagraph-capture-size": 100}, told | {"enforce-eager": True}) == {
            "max-cudagraph-capture-size": 100}, told
    assert VLLM.effective({"performance-mode": "throughput"}, {"max-num-seqs": 64, "max-num-batched-tokens": 4096}) == {
        "performance-mode": "balanced"}
    assert VLLM.effective({"performance-mode": "throughput"}, {"max-num-seqs": 64}) == {"performance-mode": "throughput"}
    # Eager or not x 3 capture sizes (248 and 250 alike) x -O2/-O3: 2 x 1 graph configs + 1 eager one.
    space = {"enforce-eager": [True, False], "max-cudagraph-capture-size": [248, 250, 512],
             "optimization-level": [2, 3]}
    task = OME_SGLANG | {"engine": {"name": "vllm", "args": {"tensor-parallel-size": 1, "max-num-batched-tokens": 8192}},
                         "search_space": space,
                         "search": {"algorithm": "grid", "baseline": False}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate", "task.yaml"]) == 0
    assert "; 3 searched trials" in capsys.readouterr().out

def test_whether_every_config_breaks_a_rule_counts_the_engines_default_and_every_value_of_a_range():
    from llm_autotuner.cluster.flag_rules import possible_conflicts
    from llm_autotuner.task import FloatRange, IntRange

    quantized = ("sets --cache-type-v q8_0 with --flash-attn off, which llama.cpp refuses at start (a quantized "
                 "V cache needs flash attention)")
    assert possible_conflicts("llama.cpp", {"flash-attn": False}, {"cache-type-v": [None, "q8_0"]}) == [
        (("cache-type-v", "flash-attn"), quantized, False)]  # None: the engine's default V cache, not quantized
    assert possible_conflicts("llama.cpp", {"flash-attn": "off"}, {"cache-type-v": ["q8_0"]})[0][2] is True
    assert possible_conflicts("llama.cpp", {"flash-attn": "on"}, {"cache-type-v": ["q8_0"]}) == []
    below = IntRange(type="int", min=1, max=200)  # each of its 200 values is below 256
    assert possible_conflicts("vllm", {"max-num-seqs": 256}, {"max-num-batched-tokens": below})[0][2] is True
    wide = IntRange(type="int", min=1, max=10**6)  # too many to list: only its ends are tried
    assert possible_conflicts("vllm", {"max-num-seqs": 256}, {"max-num-batched-tokens": wide})[0][1:] == (
        "sets --max-num-batched-tokens 1 below --max-num-seqs 256, which vLLM refuses at start", False)
    # Three flags: every config breaks it only when every value of each is in a broken combination.
    off = {"max-model-len": 4096, "enable-chunked-prefill": False}
    assert possible_conflicts("vllm", off, {"max-num-batched-tokens": [1024, 2048]})[0][2] is True
    assert possible_conflicts("vllm", {"max-model-len": 4096},
                              {"max-num-batched-tokens": [1024, 2048]}) == []  # vLLM's default: chunked on
    either = possible_conflicts("vllm", {"max-model-len": 4096, "max-num-batched-tokens": 2048},
                                {"enable-chunked-prefill": [True, False]})
    assert [(flags, always) for flags, _, always in either] == [
        (("max-num-batched-tokens", "max-model-len", "enable-chunked-prefill"), False)]
    # A flag the task leaves out is judged at the engine's default: SGLang's tp-size 1, dp-size 1 (with
    # which SGLang turns DP attention off itself).
    assert possible_conflicts("sglang", {"enable-dp-attention": True}, {"dp-size": [2, 4]})[0][1:] == (
        "sets --tp-size 1, not a multiple of --dp-size 2 with --enable-dp-attention, which SGLang refuses at start",
        True)
    assert possible_conflicts("sglang", {"enable-dp-attention": True}, {"tp-size": [1, 3]}) == []
    from llm_autotuner.cluster.flag_rules import conflict  # one trial's config, as trial.py and render judge it
    assert conflict("sglang", {"enable-dp-attention": True, "tp-size": 4, "dp-size": 1}) is None
    assert conflict("sglang", {"enable-dp-attention": True, "tp-size": 4, "dp-size": 3}).startswith(
        "sets --tp-size 4, not a multiple of --dp-size 3")
    # The flag under SGLang's other name; HyperOpt's numpy integers; a value left to the engine (None) is
    # its default, so every config breaks the rule; a decode worker is not checked for the page size.
    import numpy

    assert conflict("sglang", SGLANG.merged({}, {"tp": 4, "attention-data-parallel-size": 3})).startswith(
        "sets --tp-size 4, not a multiple of --attn-dp-size 3")
    assert conflict("sglang", {"tp-size": numpy.int64(4), "attn-dp-size": numpy.int64(3)}) is not None
    assert possible_conflicts("sglang", {"enable-dp-attention": True, "dp-size": 2}, {"tp-size": [None, 3]})[0][2] is True
    assert conflict("sglang", {"chunked-prefill-size": 1000, "page-size": 64}) is not None
    assert conflict("sglang", {"chunked-prefill-size": 1000, "page-size": 64, "disaggregation-mode": "decode"}) is None
    # A float where a whole number is due is the catalog's to refuse; this rule judges whole numbers only.
    assert possible_conflicts("vllm", {"max-num-seqs": 256},
                              {"max-num-batched-tokens": FloatRange(type="float", min=1, max=2)}) == []
