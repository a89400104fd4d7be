"""load_tokenizer: the transformers tokenizer of a model (HF directory or GGUF file).

GGUF byte-level BPE vocabularies (gpt2-style, e.g. SmolLM2) are built directly from the file's
metadata with `tokenizers`, giving the same encodings as transformers' GGUF converter in a
fraction of the time (the metadata is parsed once per process, shared with the model loader).
Any other GGUF vocabulary goes through transformers.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from pagedllm.model_executor.model_loader.resolve import ModelSource, resolve_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from pagedllm.config.model import ModelConfig

# GGUF pre-tokenizer names whose split is GPT-2's byte-level regex in transformers' converter.
_BYTE_LEVEL_PRE = {None, "default", "gpt2", "smollm"}
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values
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
    fast = gguf_byte_level_tokenizer(os.path.join(path, gguf_file))
    if fast is not None:
        return fast
    from pagedllm.model_executor.model_loader.gguf import gguf_field, open_gguf

    arch = gguf_field(open_gguf(os.path.join(path, gguf_file)), "general.architecture")
    if arch in _GGUF_TOKENIZER_CLASSES:
        import transformers

        cls = getattr(transformers, _GGUF_TOKENIZER_CLASSES[arch])
        return cls.from_pretrained(path, gguf_file=gguf_file)
    return AutoTokenizer.from_pretrained(path, gguf_file=gguf_file, trust_remote_code=False)


def gguf_byte_level_tokenizer(gguf_path: str) -> PreTrainedTokenizerBase | None:
    """A PreTrainedTokenizerFast built from the GGUF vocabulary, or None if the file's
    vocabulary is not plain byte-level BPE (the caller then asks transformers)."""
    from pagedllm.model_executor.model_loader.gguf import gguf_field, open_gguf

    reader = open_gguf(gguf_path)

    def meta(key: str, default: Any = None) -> Any:
        return gguf_field(reader, f"tokenizer.{key}", default)

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


def _wrap(backend: Any, tokens: list[str], meta: Any, gguf_path: str) -> PreTrainedTokenizerBase:
    from transformers import PreTrainedTokenizerFast

    special = {
        name: tokens[token_id]
        for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                          ("pad_token", "padding"))
        if (token_id := meta(f"ggml.{key}_token_id")) is not None
    }  # fmt: skip
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        name_or_path=os.path.dirname(gguf_path),
        chat_template=meta("chat_template"),
        add_bos_token=False,
        **special,
    )


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
