"""load_tokenizer: the transformers tokenizer of a model (HF directory or GGUF file).

Two kinds of GGUF vocabulary are built directly from the file's metadata with `tokenizers`
(the metadata is parsed once per process, shared with the model loader), giving the same
tokenizer as transformers' GGUF converter in a fraction of the time:
- byte-level BPE (gpt2-style, e.g. SmolLM2), with the file's merges;
- Gemma's sentencepiece BPE (gemma / gemma2 / gemma3), whose merges the file does not have:
  gguf_gemma.py rebuilds them as transformers does (Gemma 3's 262k tokens: 4.5 s instead of
  30 s for a first load on the loaded 2-core machine).
Any other GGUF vocabulary goes through transformers (transformers_gguf_tokenizer, also the
reference the tests compare the fast paths with).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from pagedllm.model_executor.model_loader.resolve import ModelSource, resolve_model
from pagedllm.tokenizer.gguf_gemma import CONTROL as _CONTROL
from pagedllm.tokenizer.gguf_gemma import GEMMA_ARCHS
from pagedllm.tokenizer.gguf_gemma import USER_DEFINED as _USER_DEFINED

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from pagedllm.config.model import ModelConfig

# GGUF pre-tokenizer names whose split is GPT-2's byte-level regex in transformers' converter.
_BYTE_LEVEL_PRE = {None, "default", "gpt2", "smollm"}
_GGUF_TOKENIZER_CLASSES = {"gemma": "GemmaTokenizer"}
"""GGUF archs whose config transformers cannot rebuild (so AutoTokenizer refuses the file) while
its GGUF tokenizer builder knows their vocabulary: this class loads it without a config."""


def load_tokenizer(model: ModelConfig | ModelSource | str | None) -> PreTrainedTokenizerBase:
    """The tokenizer (with its chat template) of a model config, a resolved source or a name."""
    source = _as_source(model)
    return _load(source.kind, source.path, source.gguf_file)


def _as_source(model: Any) -> ModelSource:
    if isinstance(model, ModelSource):
        return model
    if model is None or isinstance(model, str):
        return resolve_model(model)
    if model.format == "gguf":  # a ModelConfig: path is the .gguf file
        return ModelSource("gguf", os.path.dirname(model.path), os.path.basename(model.path), "")
    return ModelSource("hf", model.path, None, "")


@functools.lru_cache(maxsize=8)
def _load(kind: str, path: str, gguf_file: str | None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    if kind == "hf":
        from pagedllm.model_executor.model_loader.config import unshipped_native_config

        # NOTE: such a config (remote code, e.g. InternLM2) handed over: AutoTokenizer would
        # otherwise read it through AutoConfig. trust_remote_code=False: a tokenizer that is
        # remote code fails at once instead of asking on stdin (which blocks a server).
        config = unshipped_native_config(path)
        kwargs = {} if config is None else {"config": config}
        try:
            return AutoTokenizer.from_pretrained(path, trust_remote_code=False, **kwargs)
        except ValueError as e:
            if "trust_remote_code" not in str(e):
                raise
            from pagedllm.model_executor.model_loader.config import refuse_remote_code

            raise ValueError(refuse_remote_code(path)) from e
    assert gguf_file is not None
    gguf_path = os.path.join(path, gguf_file)
    fast = gguf_byte_level_tokenizer(gguf_path) or gguf_gemma_tokenizer(gguf_path)
    if fast is not None:
        return fast
    return transformers_gguf_tokenizer(path, gguf_file)


def transformers_gguf_tokenizer(path: str, gguf_file: str) -> PreTrainedTokenizerBase:
    """transformers' own tokenizer of a GGUF file in directory `path` (its converter)."""
    from transformers import AutoTokenizer

    from pagedllm.model_executor.model_loader.gguf import gguf_field, open_gguf

    arch = gguf_field(open_gguf(os.path.join(path, gguf_file)), "general.architecture")
    if arch in _GGUF_TOKENIZER_CLASSES:
        import transformers

        cls = getattr(transformers, _GGUF_TOKENIZER_CLASSES[arch])
        return cls.from_pretrained(path, gguf_file=gguf_file)
    return AutoTokenizer.from_pretrained(path, gguf_file=gguf_file, trust_remote_code=False)


def _tokenizer_metadata(gguf_path: str) -> Any:
    """meta(key, default=None, prefix="tokenizer."): a field of the file's metadata (parsed once
    per process, shared with the model loader)."""
    from pagedllm.model_executor.model_loader.gguf import gguf_field, open_gguf

    reader = open_gguf(gguf_path)

    def meta(key: str, default: Any = None, prefix: str = "tokenizer.") -> Any:
        return gguf_field(reader, prefix + key, default)

    return meta


def gguf_byte_level_tokenizer(gguf_path: str) -> PreTrainedTokenizerBase | None:
    """A PreTrainedTokenizerFast built from the GGUF vocabulary, or None if the file's
    vocabulary is not plain byte-level BPE (the caller then asks transformers)."""
    meta = _tokenizer_metadata(gguf_path)
    if meta("ggml.model") != "gpt2" or meta("ggml.pre") not in _BYTE_LEVEL_PRE:
        return None
    if meta("ggml.add_bos_token") or meta("ggml.add_eos_token") or meta("ggml.merges") is None:
        return None
    tokens: list[str] = meta("ggml.tokens")
    backend = _byte_level_bpe(tokens, meta("ggml.merges"), meta("ggml.token_type") or [])
    return _wrap(backend, tokens, meta, gguf_path)


def _byte_level_bpe(tokens: list[str], merges: list[str], token_types: list[int]) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    pairs = [tuple(merge.split(" ")) for merge in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=True)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    kinds = list(zip(tokens, token_types))
    # NOTE: a "control" token spelled outside the byte alphabet is a llama.cpp mislabel; adding
    # it would grow the vocabulary (transformers skips it too).
    tokenizer.add_special_tokens([
        AddedToken(t, normalized=False, special=True)
        for t, kind in kinds if kind == _CONTROL and set(t) <= alphabet
    ])  # fmt: skip
    tokenizer.add_tokens([
        AddedToken(t, normalized=False, special=False)
        for t, kind in kinds if kind == _USER_DEFINED and t in vocab
    ])  # fmt: skip
    return tokenizer


def gguf_gemma_tokenizer(gguf_path: str) -> PreTrainedTokenizerBase | None:
    """The tokenizer of a Gemma GGUF's sentencepiece vocabulary (gguf_gemma.py), as
    transformers' GemmaTokenizer builds it from the file; None for any other vocabulary (the
    caller then asks transformers)."""
    from pagedllm.tokenizer.gguf_gemma import gemma_backend

    meta = _tokenizer_metadata(gguf_path)
    if meta("ggml.model") != "llama" or meta("architecture", prefix="general.") not in GEMMA_ARCHS:
        return None
    # (a file with merges, or a pre-tokenizer split, would make transformers use them)
    if meta("ggml.merges") is not None or meta("ggml.pre") not in (None, "default"):
        return None
    tokens: list[str] = meta("ggml.tokens")
    backend = gemma_backend(tokens, meta("ggml.token_type") or [])
    # NOTE: a sentencepiece file without the flag gets BOS (llama.cpp's default, and
    # transformers'); GemmaTokenizer's own defaults for the rest: "<mask>", padding on the left,
    # no token_type_ids
    return _wrap(backend, tokens, meta, gguf_path, add_bos=bool(meta("ggml.add_bos_token", True)),
                 add_eos=bool(meta("ggml.add_eos_token", False)), mask_token="<mask>",
                 padding_side="left", model_input_names=["input_ids", "attention_mask"])


def _wrap(backend: Any, tokens: list[str], meta: Any, gguf_path: str, add_bos: bool = False,
          add_eos: bool = False, **kwargs: Any) -> PreTrainedTokenizerBase:
    from transformers import PreTrainedTokenizerFast

    special = {
        name: tokens[token_id]
        for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                          ("pad_token", "padding"))
        if (token_id := meta(f"ggml.{key}_token_id")) is not None
    }  # fmt: skip
    add_bos, add_eos = add_bos and "bos_token" in special, add_eos and "eos_token" in special
    if add_bos or add_eos:
        # transformers 5 rebuilds this from add_bos_token / add_eos_token (the same template);
        # earlier versions' PreTrainedTokenizerFast ignores those and keeps the backend's
        backend.post_processor = _bos_eos_template(special.get("bos_token"), add_bos,
                                                   special.get("eos_token"), add_eos, backend)
    return PreTrainedTokenizerFast(
        tokenizer_object=_Handover(backend),
        name_or_path=os.path.dirname(gguf_path),
        chat_template=meta("chat_template"),
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        **special,
        **kwargs,
    )


class _Handover:
    """Hands a freshly built backend to PreTrainedTokenizerFast without a copy.

    It deep-copies its `tokenizer_object` first thing (every transformers version does), which
    for a tokenizers.Tokenizer is a JSON round trip: ~1.5 s for Gemma's 262k tokens and 515k
    merges. Nothing else holds our backend, so the copy would only cost time."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def __deepcopy__(self, memo: dict) -> Any:
        return self.backend


def _bos_eos_template(bos: str | None, add_bos: bool, eos: str | None, add_eos: bool,
                      backend: Any) -> Any:
    """The post-processor that adds BOS before and / or EOS after each sequence."""
    from tokenizers import processors

    def sequence(name: str, type_id: int) -> list[str]:
        return [*([f"{bos}:{type_id}"] if add_bos else []), f"${name}:{type_id}",
                *([f"{eos}:{type_id}"] if add_eos else [])]  # fmt: skip

    single, pair = " ".join(sequence("A", 0)), " ".join(sequence("A", 0) + sequence("B", 1))
    special = [(t, backend.token_to_id(t)) for t, wanted in ((bos, add_bos), (eos, add_eos))
               if wanted]  # fmt: skip
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the byte-level BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    mapping, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping
