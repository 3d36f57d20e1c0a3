"""The tokenizer folder built from a GGUF counts tokens as llama-server does, for each kind of vocabulary
autotuner rebuilds (SentencePiece; byte-level BPE with each family of word splits); a kind it cannot
rebuild, or a file cut short, is refused in one line; the cache is keyed by the vocabulary, not the file name.

The reference is the real llama-server's /tokenize. Vocabularies other than SmolLM2's come from the
vocab-only GGUFs llama.cpp keeps for its own tokenizer tests (vendor/llama.cpp/models/ in the
llama-cpp-python source distribution the engine is built from); llama-server cannot serve a vocabulary
alone, so each is wrapped in a tiny llama model with zero weights: /tokenize needs no sensible ones.
"""

import json
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from llm_autotuner.cluster import llamacpp_build
from llm_autotuner.cluster.deployer import EngineSpec
from llm_autotuner.cluster.engines import LLAMA_CPP
from llm_autotuner.cluster.gguf_tokenizer import ensure_tokenizer
from llm_autotuner.cluster.local import LocalDeployer
from llm_autotuner.errors import SetupError

pytestmark = pytest.mark.e2e

TEXTS = [
    "Hello world",
    " Hello world",
    "   three leading spaces, two trailing  ",
    "line one\nline two\n\n  indented\n",
    "\ttab\tseparated\r\nand a Windows line end",
    "digits 0 12 345 6789 12345678 3.14159 1,000,000",
    "I'm sure they'll say it's fine; we've done what we'd planned. DON'T",
    "naïve café, Straße, Ελληνικά, русский, 中文字符, 日本語のテキスト, 한국어, हिन्दी",
    "emoji 🦙🚀👍🏽 and symbols ∑∫√ ← ™ © ½ ᏣᎳᎩ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "code:\ndef f(x):\n    return x**2  # squared\n\n\n\tif x != 0 && y <= 1 || z >= 2: pass",
    # Special tokens, found whole where the vocabulary types them so ("</s>" is left out: llama.cpp also
    # takes it whole where it is typed a normal token, as in Qwen2's vocabulary, by its text).
    "<s>[INST] special <|im_start|>user\nHi<|im_end|> tokens <|endoftext|><|user|>",
    "a",
    " ",
    "\n",
]

# llama.cpp's vocab-only GGUFs used, and what each stands for (SmolLM2 stands for BPE with digits split
# one by one).
VOCABS = {
    "llama-spm": "SentencePiece (Llama 2)",
    "phi-3": "SentencePiece (Phi-3, with control and user-defined tokens)",
    "gpt-2": "BPE, GPT-2 splits",
    "llama-bpe": "BPE, Llama 3 splits, whole words kept, BOS added",
    "qwen2": "BPE, Qwen2 splits",
    "qwen35": "BPE, Qwen3.5 splits",
    "gpt-neox": "BPE, no pre-tokenizer named (llama.cpp's default splits)",
}


@pytest.fixture(scope="session")
def vocab_dir(request) -> Path:
    """llama.cpp's vocab-only GGUFs, taken once from the engine's source distribution (pytest's cache keeps them)."""
    folder = request.config.cache.mkdir(f"llama-cpp-{llamacpp_build.LLAMA_CPP_PYTHON_VERSION}-vocabs")
    wanted = [f"ggml-vocab-{name}.gguf" for name in VOCABS]
    if all((folder / name).is_file() for name in wanted):
        return folder
    work = folder / "download"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    sdist = llamacpp_build._sdist(work, progress=lambda line: print(line, file=sys.stderr))  # the build's own source
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            name = Path(member.name).name
            if name in wanted and "/vendor/llama.cpp/models/" in member.name:
                (folder / name).write_bytes(archive.extractfile(member).read())
    shutil.rmtree(work)
    return folder


def tiny_model(vocab_dir: Path, name: str) -> Path:
    """A complete one-layer llama GGUF (embedding width 8, zero weights) carrying the vocabulary `name`;
    kept beside the vocabularies (writing one takes seconds for 150k tokens)."""
    out = vocab_dir / f"tiny-{name}.gguf"
    if not out.is_file():
        partial = out.with_suffix(".partial")
        _write_tiny_model(vocab_dir / f"ggml-vocab-{name}.gguf", partial)
        partial.replace(out)
    return out


def _write_tiny_model(vocab: Path, out: Path) -> None:
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    fields = GGUFReader(str(vocab)).fields
    n_vocab, n_embd, n_ff = len(fields["tokenizer.ggml.tokens"].data), 8, 16
    writer = GGUFWriter(str(out), "llama")
    for key, value in {"context_length": 256, "embedding_length": n_embd, "block_count": 1,
                       "feed_forward_length": n_ff, "attention.head_count": 2, "attention.head_count_kv": 2}.items():
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    for key, field in fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    shapes = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,),
              "blk.0.attn_norm.weight": (n_embd,), "blk.0.ffn_norm.weight": (n_embd,),
              "blk.0.ffn_gate.weight": (n_ff, n_embd), "blk.0.ffn_up.weight": (n_ff, n_embd),
              "blk.0.ffn_down.weight": (n_embd, n_ff),
              **{f"blk.0.attn_{name}.weight": (n_embd, n_embd) for name in ("q", "k", "v", "output")}}
    for name, shape in shapes.items():
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def vocab_only_gguf(path: Path, kind: str, tokens: list[str], merges: list[str] = (), pre: str | None = None) -> Path:
    """A GGUF holding only a small tokenizer: enough to build a tokenizer folder from, not to serve."""
    from gguf import GGUFWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(kind)
    if pre:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_array("tokenizer.ggml.merges", list(merges))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def server_tokenize(url: str, text: str, add_special: bool) -> list[int]:
    body = json.dumps({"content": text, "add_special": add_special}).encode()
    request = urllib.request.Request(url + "/tokenize", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as response:
        return json.loads(response.read())["tokens"]


def mismatches(llama_server: str, model: Path, tokenizer_dir: Path, workdir: Path) -> list[str]:
    """Each text whose ids from our folder differ from llama-server's, with both lists."""
    from transformers import PreTrainedTokenizerFast

    ours = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    spec = EngineSpec(experiment="test", run_id="test-run", trial_id="t1", profile=LLAMA_CPP, executable=llama_server,
                      model_path=str(model), served_name=f"vocab-{model.stem}",
                      flags={"ctx-size": 256, "parallel": 1, "threads": 1}, workdir=workdir)
    found = []
    with LocalDeployer().deployed(spec, 120) as endpoint:
        cases = [(text, False) for text in TEXTS] + [(TEXTS[0], True)]  # True: BOS/EOS as the GGUF asks
        for text, add_special in cases:
            expected = server_tokenize(endpoint.url, text, add_special)
            got = ours.encode(text, add_special_tokens=add_special)
            if got != expected:
                found.append(f"{text!r} (add_special={add_special}): ours {got}, llama-server {expected}")
    return found


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_smollm2_counts_as_llama_server_does(own_cache, llama_server, smollm2):
    tokenizer_dir = ensure_tokenizer(Path(smollm2))
    assert mismatches(llama_server, Path(smollm2), tokenizer_dir, own_cache / "engine") == []


@pytest.mark.parametrize("name", list(VOCABS))
def test_each_kind_of_vocabulary_counts_as_llama_server_does(name, own_cache, llama_server, vocab_dir):
    model = tiny_model(vocab_dir, name)
    tokenizer_dir = ensure_tokenizer(model)
    assert mismatches(llama_server, model, tokenizer_dir, own_cache / "engine") == [], VOCABS[name]


def test_a_file_cut_short_is_refused_in_one_line(own_cache, smollm2):
    cut = own_cache / "cut.gguf"
    cut.write_bytes(Path(smollm2).read_bytes()[:20 << 20])  # metadata whole, tensor data cut off
    with pytest.raises(SetupError) as caught:
        ensure_tokenizer(cut)
    message = str(caught.value)
    assert message.startswith(f"model.path: cannot read the tokenizer from {cut} (a truncated or damaged GGUF? ")
    assert "the file ends at byte 20971520, before its tensor data does" in message and "\n" not in message


@pytest.mark.parametrize("kind, pre", [("bert", None), ("t5", None), ("gpt2", "tekken")])
def test_a_tokenizer_autotuner_cannot_rebuild_is_refused_in_one_line(kind, pre, own_cache):
    model = vocab_only_gguf(own_cache / "model.gguf", kind, ["[UNK]", "a", "b", "ab"], ["a b"], pre)
    with pytest.raises(SetupError) as caught:
        ensure_tokenizer(model)
    message = str(caught.value)
    assert message.startswith("model.path: autotuner cannot count tokens as llama.cpp does for model.gguf: ")
    assert repr(pre or kind) in message and "give model.tokenizer" in message and "\n" not in message
    assert not list((own_cache / "cache").rglob("tokenizer.json"))


def test_the_cache_is_keyed_by_the_vocabulary_not_the_file_name(own_cache):
    from transformers import PreTrainedTokenizerFast

    first = vocab_only_gguf(own_cache / "a" / "model.gguf", "gpt2", ["a", "b", "ab"], ["a b"], "gpt-2")
    second = vocab_only_gguf(own_cache / "b" / "model.gguf", "gpt2", ["a", "b", "ba"], ["b a"], "gpt-2")
    folders = [ensure_tokenizer(first), ensure_tokenizer(second)]
    assert folders[0] != folders[1]
    assert [PreTrainedTokenizerFast.from_pretrained(str(folder)).encode("ab") for folder in folders] == [[2], [0, 1]]
    same = own_cache / "c" / "model.gguf"
    same.parent.mkdir()
    shutil.copy(first, same)
    assert ensure_tokenizer(same) == folders[0]  # same name, same vocabulary: the same folder
