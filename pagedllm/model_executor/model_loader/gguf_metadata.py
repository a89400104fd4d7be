"""Types and ranges of the GGUF metadata pagedllm reads, checked once when a file is opened.

gguf_file.py makes sure the file is well-formed; this makes sure what it says is usable: a
string where a layer count belongs, a list of numbers where the vocabulary belongs, a head count
of 0 (a division by zero later) or a token id past the vocabulary would otherwise surface as a
TypeError, KeyError or ZeroDivisionError deep in config or tokenizer building. Every problem is a
GGUFMetadataError (a ValueError) naming the file, the key, what was expected and what was found.

Only keys pagedllm reads are checked (others are the file's business); `<arch>.` keys are checked
under the file's general.architecture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

Check = Callable[[Any], str | None]
"""A value -> None when it is fine, else what was expected ("a positive integer")."""


class GGUFMetadataError(ValueError):
    """A metadata value of the wrong type or out of range."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _positive_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 1 else "a positive integer"


def _count(value: Any) -> str | None:
    return None if _is_int(value) and value >= 0 else "a non-negative integer"


def _positive_number(value: Any) -> str | None:
    return None if _is_number(value) and value > 0 else "a positive finite number"


def _number(value: Any) -> str | None:
    return None if _is_number(value) else "a finite number"


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) or value in (0, 1) else "a boolean"


def _all_strings(values: list) -> bool:
    return set(map(type, values)) <= {str}


def _all_numbers(values: list) -> bool:
    return set(map(type, values)) <= {int, float} and all(map(math.isfinite, values))


def _all_counts(values: list) -> bool:
    return set(map(type, values)) <= {int} and (not values or min(values) >= 0)


_WHOLE_LIST_CHECKS: dict[Check, Callable[[list], bool]] = {
    _string: _all_strings, _number: _all_numbers, _count: _all_counts}
"""Item check -> the same check over a whole list at C speed (a vocabulary's 262k items took
~0.15 s item by item); the item loop then only runs to name a bad item."""


def _list_of(item: Check, what: str, non_empty: bool = False) -> Check:
    whole_list = _WHOLE_LIST_CHECKS.get(item)

    def check(value: Any) -> str | None:
        if not isinstance(value, list) or (non_empty and not value):
            return f"a {'non-empty ' if non_empty else ''}list of {what}"
        if whole_list is not None and whole_list(value):
            return None
        for index, element in enumerate(value):
            if item(element) is not None:
                return f"a list of {what} (item {index} is {_describe(element)})"
        return None

    return check


ARCH_KEYS: dict[str, Check] = {
    **dict.fromkeys(("block_count", "embedding_length", "feed_forward_length", "context_length",
                     "vocab_size", "attention.head_count", "attention.head_count_kv",
                     "attention.key_length", "attention.value_length",
                     "attention.key_length_mla", "attention.value_length_mla",
                     "attention.kv_lora_rank",
                     "rope.dimension_count", "rope.scaling.original_context_length",
                     "expert_count", "expert_used_count", "expert_feed_forward_length",
                     "expert_group_count", "expert_group_used_count"), _positive_int),
    # (sliding_window 0: none, as the converter writes it for Phi-3 without one)
    **dict.fromkeys(("attention.q_lora_rank", "attention.sliding_window", "expert_shared_count",
                     "leading_dense_block_count", "expert_gating_func"), _count),
    **dict.fromkeys(("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon",
                     "rope.freq_base", "rope.scaling.factor", "expert_weights_scale"),
                    _positive_number),
    **dict.fromkeys(("logit_scale", "rope.scaling.yarn_log_multiplier",
                     "rope.scaling.yarn_beta_fast", "rope.scaling.yarn_beta_slow"), _number),
    "rope.scaling.type": _string,
    **dict.fromkeys(("use_parallel_residual", "expert_weights_norm"), _flag),
    # Gemma 2, Phi-3, Qwen2-MoE and Mamba (gguf_families_qwen_gemma.py)
    **dict.fromkeys(("attn_logit_softcapping", "final_logit_softcapping",
                     "rope.scaling.attn_factor"), _positive_number),
    **dict.fromkeys(("ssm.conv_kernel", "ssm.inner_size", "ssm.state_size",
                     "ssm.time_step_rank"), _positive_int),
    "expert_shared_feed_forward_length": _count,
    "ssm.dt_b_c_rms": _flag,
}
"""`<arch>.<key>` -> its check."""
# Granite's multipliers (gguf_families2.py)
ARCH_KEYS.update(dict.fromkeys(("attention.scale", "embedding_scale", "residual_scale"),
                               _positive_number))

REQUIRED_ARCH_KEYS = ("block_count", "embedding_length", "feed_forward_length",
                      "context_length", "attention.head_count")
"""What every model needs (llama.cpp refuses a file without them too)."""

ATTENTION_FREE_ARCHS = ("mamba",)
"""Archs whose converter writes attention.head_count and feed_forward_length as 0 (unused:
no attention, no MLP), where 0 is fine."""
_UNUSED_IN_ATTENTION_FREE = ("attention.head_count", "feed_forward_length")

TOKEN_ID_KEYS = tuple(f"tokenizer.ggml.{name}_token_id" for name in (
    "bos", "eos", "padding", "unknown", "eot", "eom", "sep", "cls", "mask"))

GLOBAL_KEYS: dict[str, Check] = {
    "general.architecture": _string,
    "tokenizer.ggml.model": _string,
    "tokenizer.ggml.pre": _string,
    "tokenizer.chat_template": _string,
    "tokenizer.ggml.tokens": _list_of(_string, "strings", non_empty=True),
    "tokenizer.ggml.merges": _list_of(_string, "strings"),
    "tokenizer.ggml.scores": _list_of(_number, "numbers"),
    "tokenizer.ggml.token_type": _list_of(_count, "integers"),
    **dict.fromkeys(("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                     "tokenizer.ggml.add_space_prefix"), _flag),
    **dict.fromkeys(TOKEN_ID_KEYS, _count),
}


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def check_gguf_metadata(fields: dict[str, Any], path: str, architectures: Collection[str]
                        ) -> None:
    """Raise GGUFMetadataError for the first value pagedllm reads that it could not use.
    `architectures`: those pagedllm builds (their files must have REQUIRED_ARCH_KEYS)."""

    def fail(key: str, problem: str) -> GGUFMetadataError:
        return GGUFMetadataError(f"{path}: GGUF metadata {key} must be {problem}, "
                                 f"got {_describe(fields.get(key))}")

    for key, check in GLOBAL_KEYS.items():
        if key in fields and (problem := check(fields[key])) is not None:
            raise fail(key, problem)
    arch = fields.get("general.architecture")
    if arch is None:
        raise GGUFMetadataError(f"{path}: GGUF metadata general.architecture is missing")
    for key, check in ARCH_KEYS.items():
        full = f"{arch}.{key}"
        if arch in ATTENTION_FREE_ARCHS and key in _UNUSED_IN_ATTENTION_FREE:
            check = _count
        if full in fields and (problem := check(fields[full])) is not None:
            raise fail(full, problem)
    missing = [f"{arch}.{key}" for key in REQUIRED_ARCH_KEYS if f"{arch}.{key}" not in fields]
    if missing and fields.get("general.type", "model") == "model" and arch in architectures:
        raise GGUFMetadataError(f"{path}: GGUF metadata {', '.join(missing)} missing")
    _check_vocabulary(fields, path)


def _check_vocabulary(fields: dict[str, Any], path: str) -> None:
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        return
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if key in fields and len(fields[key]) != len(tokens):
            raise GGUFMetadataError(f"{path}: GGUF metadata {key} has {len(fields[key])} "
                                    f"entries for {len(tokens)} tokens")
    for key in TOKEN_ID_KEYS:
        value = fields.get(key)
        if value is not None and value >= len(tokens):
            raise GGUFMetadataError(f"{path}: GGUF metadata {key} {value} is past the "
                                    f"vocabulary of {len(tokens)} tokens")

