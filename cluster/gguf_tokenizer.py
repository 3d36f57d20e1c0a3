"""A Hugging Face tokenizer folder for a GGUF model, counting tokens as llama.cpp does.

genai-bench needs a tokenizer folder to count tokens and build prompts; transformers' own GGUF
loader needs torch (and aims at the model's reference tokenizer, not at llama.cpp's counts), so
the GGUF's metadata is read here and the tokenizer llama.cpp runs for it is built with `tokenizers`.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from llm_autotuner.cluster.llamacpp_build import cache_dir
from llm_autotuner.errors import SetupError


def ensure_tokenizer(gguf_path: Path) -> Path:
    """A Hugging Face tokenizer folder that counts tokens as llama.cpp does for this GGUF, built from
    the GGUF's own vocabulary. It is cached by content: two files of one name with different
    vocabularies get different folders."""
    try:
        fields, key = _read_tokenizer_fields(gguf_path)
        target = cache_dir() / "tokenizers" / f"{gguf_path.stem}-{key}"
        if (target / "tokenizer.json").is_file():
            return target
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        _write_tokenizer(fields, gguf_path.name, tmp)
    except (ValueError, IndexError, KeyError, OSError, struct.error) as error:
        raise SetupError(f"model.path: cannot read the tokenizer from {gguf_path} (a truncated or damaged GGUF? "
                         f"{type(error).__name__}: {str(error)[:120]}); give model.tokenizer, or fix the file") from None
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)
    return target


# Part of every tokenizer folder's cache key: bump it when the folder built from a given GGUF changes,
# so that folders built by older code are not reused.
TOKENIZER_BUILD = 2

# GGUF value types (gguf's GGUFValueType): the struct format of each fixed-size one, and the two others.
_GGUF_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _read_tokenizer_fields(gguf_path: Path) -> tuple[dict, str]:
    """The GGUF's `tokenizer.*` metadata, and a hash of it as stored (names, types and values) for
    the cache key; raises ValueError when the file ends before its tensor data does.

    Read straight from the file's bytes: gguf's GGUFReader makes a numpy view of every item of every
    array and takes seconds on a vocabulary of 150k tokens, and this runs at the start of every run.
    """
    digest = hashlib.sha256(f"tokenizer build {TOKENIZER_BUILD}".encode())
    metadata = {}
    with open(gguf_path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        reader = _GgufBytes(data)
        magic, version, n_tensors, n_kv = reader.take("4sIQQ")
        if magic != b"GGUF" or not 2 <= version < 256:  # version 1 is obsolete; a huge one: big-endian
            raise ValueError(f"not a little-endian GGUF of version 2 or later (magic {magic!r}, version {version})")
        for _ in range(n_kv):
            start = reader.offset
            key = reader.string()
            metadata[key] = reader.value(reader.take("I")[0])
            if key.startswith("tokenizer."):
                digest.update(data[start:reader.offset])
        _check_tensor_data(reader, n_tensors, metadata.get("general.alignment", 32))
    return {key: value for key, value in metadata.items() if key.startswith("tokenizer.")}, digest.hexdigest()[:16]


class _GgufBytes:
    """Reads GGUF values (little-endian) one after the other from a file's bytes."""

    def __init__(self, data: mmap.mmap):
        self.data, self.offset = data, 0

    def take(self, layout: str) -> tuple:
        size = struct.calcsize("<" + layout)
        if self.offset + size > len(self.data):
            raise ValueError(f"the file ends at byte {len(self.data)}, before its metadata does")
        values = struct.unpack_from("<" + layout, self.data, self.offset)
        self.offset += size
        return values

    def string(self) -> str:
        (length,) = self.take("Q")
        text = self.data[self.offset:self.offset + length]
        if len(text) < length:
            raise ValueError(f"the file ends at byte {len(self.data)}, before its metadata does")
        self.offset += length
        return text.decode("utf-8")

    def value(self, kind: int):
        if kind == _GGUF_STRING:
            return self.string()
        if kind == _GGUF_ARRAY:
            item_kind, count = self.take("IQ")
            if item_kind in _GGUF_FORMATS:
                return list(self.take(f"{count}{_GGUF_FORMATS[item_kind]}"))
            return [self.value(item_kind) for _ in range(count)]
        if kind not in _GGUF_FORMATS:
            raise ValueError(f"unknown GGUF value type {kind} at byte {self.offset}")
        return self.take(_GGUF_FORMATS[kind])[0]


def _check_tensor_data(reader: _GgufBytes, n_tensors: int, alignment: int) -> None:
    """Raise ValueError when the file ends before the data of its tensors does (a download cut short):
    llama-server would refuse it at every trial."""
    from gguf.constants import GGML_QUANT_SIZES

    end = 0
    for _ in range(n_tensors):
        reader.string()  # the tensor's name
        (n_dims,) = reader.take("I")
        shape = reader.take(f"{n_dims}Q")
        ggml_type, offset = reader.take("IQ")
        block, size = GGML_QUANT_SIZES.get(ggml_type, (1, 0))  # a type newer than gguf: its start at least
        end = max(end, offset + math.prod(shape) // block * size)
    data_start = -(-reader.offset // alignment) * alignment
    if len(reader.data) < data_start + end:
        raise ValueError(f"the file ends at byte {len(reader.data)}, before its tensor data does "
                         f"(byte {data_start + end})")


# llama.cpp's token types (`tokenizer.ggml.token_type`) that it finds whole in the text before the rest
# is tokenized; the first two only when asked to parse special tokens, as the server does.
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4

# How llama.cpp (src/llama-vocab.cpp in the llama-cpp-python 0.3.36 sdist we build) splits text into
# words before byte-level BPE, by the `tokenizer.ggml.pre` names that select it. Each regex splits the
# pieces the one before left, keeping both its matches and the text between them.
_GPT2_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_WORDS = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_WORDS = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35_WORDS = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                 r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class _WordSplit:
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a word that is a token as a whole is that token, merges or not
    add_bos: bool = False  # llama.cpp's default when the GGUF does not say


_GPT2 = _WordSplit((_GPT2_WORDS,))
_DIGITS_APART = _WordSplit((r"\p{N}", _GPT2_WORDS))
_LLAMA3 = _WordSplit((_LLAMA3_WORDS,), ignore_merges=True, add_bos=True)
_QWEN2 = _WordSplit((_QWEN2_WORDS,))
_WORD_SPLITS = {
    "default": _WordSplit((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_WORDS, r"\p{N}+", "[0-9][0-9][0-9]")),
    **dict.fromkeys(["gpt-2", "phi-2", "gigachat", "a.x-4.0", "mellum", "exaone4", "mpt", "olmo", "jais",
                     "trillion", "granite-docling"], _GPT2),
    **dict.fromkeys(["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"],
                    _DIGITS_APART),
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano"], _LLAMA3),
    **dict.fromkeys(["dbrx", "smaug-bpe"], _WordSplit((_LLAMA3_WORDS,))),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open"],
                    _QWEN2),
    "qwen35": _WordSplit((_QWEN35_WORDS,)),
}


def _write_tokenizer(fields: dict, file_name: str, out: Path) -> None:
    # transformers warns at import that torch is missing: we only need its tokenizer class.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import PreTrainedTokenizerFast

    unsupported = _unsupported(fields)
    if unsupported:
        raise SetupError(f"model.path: autotuner cannot count tokens as llama.cpp does for {file_name}: "
                         f"{unsupported}; give model.tokenizer (the model's Hugging Face tokenizer folder or hub id)")
    tokenizer, add_bos, default_ids = _BUILDERS[fields["tokenizer.ggml.model"]](fields)
    tokens = fields["tokenizer.ggml.tokens"]
    _add_special_tokens(tokenizer, tokens, fields.get("tokenizer.ggml.token_type", []))
    ids = {name: fields.get(f"tokenizer.ggml.{key}", default_ids.get(name)) for name, key in _ID_KEYS.items()}
    named = {name: tokens[index] for name, index in ids.items() if index is not None}
    bos = named.get("bos") if fields.get("tokenizer.ggml.add_bos_token", add_bos) else None
    eos = named.get("eos") if fields.get("tokenizer.ggml.add_eos_token", False) else None
    tokenizer.post_processor = _bos_eos_processor(tokenizer, bos, eos)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=named.get("bos"),
                                      eos_token=named.get("eos"), unk_token=named.get("unk"))
    if "tokenizer.chat_template" in fields:
        wrapped.chat_template = fields["tokenizer.chat_template"]
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out))


_ID_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id"}


def _unsupported(fields) -> str | None:
    """What about the GGUF's tokenizer autotuner cannot rebuild, if anything."""
    kind = fields["tokenizer.ggml.model"]
    if kind not in _BUILDERS:
        return (f"its tokenizer is of kind {kind!r} (tokenizer.ggml.model), and autotuner rebuilds only "
                f"{' and '.join(map(repr, _BUILDERS))}")
    if kind == "gpt2" and _pre(fields) not in _WORD_SPLITS:
        return (f"its tokenizer splits words the {_pre(fields)!r} way (tokenizer.ggml.pre), which autotuner "
                "does not know")
    return None


def _pre(fields) -> str:
    return fields.get("tokenizer.ggml.pre", "default")


def _sentencepiece(fields):
    """llama.cpp's SentencePiece tokenizer: spaces become '▁' and one more goes before the text (and
    after each special token) unless the GGUF says not to; then the adjacent pair whose joined text
    is the best-scored token is merged, again and again; a character left without a token is spelled
    in byte tokens (<0xNN>).

    The `tokenizers` BPE model does the same when given, as its ranked merges, every split of each
    token into two tokens, ranked by the whole token's score.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens = fields["tokenizer.ggml.tokens"]
    scores = fields.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = {token: index for index, token in enumerate(tokens)}
    ranked = sorted((-scores[index], index, cut) for token, index in vocab.items() for cut in range(1, len(token))
                    if token[:cut] in vocab and token[cut:] in vocab)
    merges = [(tokens[index][:cut], tokens[index][cut:]) for _, index, cut in ranked]
    unk = fields.get("tokenizer.ggml.unknown_token_id", 0)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=tokens[unk], fuse_unk=True,
                                     byte_fallback=True))
    escape = [normalizers.Replace(" ", "\u2581")]
    decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if fields.get("tokenizer.ggml.add_space_prefix", True):
        # Always, even before a text that starts with a space, as llama.cpp does (Metaspace would not).
        escape.insert(0, normalizers.Prepend("\u2581"))
        decode.append(decoders.Strip(" ", 1, 0))
    tokenizer.normalizer = normalizers.Sequence(escape)
    tokenizer.decoder = decoders.Sequence(decode)
    return tokenizer, True, {"bos": 1, "eos": 2, "unk": 0}  # llama.cpp's defaults: BOS added, these ids


def _byte_level_bpe(fields):
    """llama.cpp's byte-level BPE: the text is split into words by the regexes its
    `tokenizer.ggml.pre` names, each word's UTF-8 bytes spelled in GPT-2's byte alphabet and merged
    by the GGUF's ranked merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    split = _WORD_SPLITS[_pre(fields)]
    tokens = fields["tokenizer.ggml.tokens"]
    # As llama.cpp reads a merge: cut at the first space after the first character.
    merges = [(merge[:cut], merge[cut + 1:]) for merge in fields["tokenizer.ggml.merges"]
              for cut in [merge.find(" ", 1)]]
    tokenizer = Tokenizer(models.BPE(vocab={token: index for index, token in enumerate(tokens)}, merges=merges,
                                     ignore_merges=split.ignore_merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in split.regexes] +
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer, split.add_bos, {}


# tokenizer.ggml.model -> the builder of the tokenizer it names.
_BUILDERS = {"llama": _sentencepiece, "gpt2": _byte_level_bpe}


def _add_special_tokens(tokenizer, tokens: list[str], types: list[int]) -> None:
    """The tokens llama.cpp finds whole in the raw text, so that they are never cut into pieces.

    By their type in the GGUF. llama.cpp also takes some texts for control tokens whatever their type
    (end-of-generation and fill-in-the-middle markers such as "</s>" in Qwen2's vocabulary); that is
    not copied: those markers are no part of benchmark prompts.
    """
    from tokenizers import AddedToken

    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                  for token, kind in zip(tokens, types) if kind in (_UNKNOWN, _CONTROL)])
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)
                          for token, kind in zip(tokens, types) if kind == _USER_DEFINED])


def _bos_eos_processor(tokenizer, bos: str | None, eos: str | None):
    """What encoding with special tokens puts around the text: BOS and EOS when the GGUF asks for them."""
    from tokenizers import processors

    around = [token for token in (bos, eos) if token is not None]
    if not around:
        return None
    single = " ".join(part for part in (bos, "$A", eos) if part is not None)
    return processors.TemplateProcessing(single=single, pair=f"{single} {single.replace('$A', '$B')}",
                                         special_tokens=[(token, tokenizer.token_to_id(token)) for token in around])
