"""The pooling a model asks for, read from its sentence-transformers files:

    modules.json            [..., {"type": "sentence_transformers.models.Pooling",
                                   "path": "1_Pooling"},
                             {"type": "sentence_transformers.models.Normalize", ...}]
    1_Pooling/config.json   {"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false}
    sentence_bert_config.json {"max_seq_length": 256}

Without them: an encoder uses CLS pooling, a decoder last-token pooling; both normalize.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pagedllm.config.pooler import PoolerConfig, PoolingType

_POOLING_MODES: dict[str, PoolingType] = {
    "pooling_mode_mean_tokens": "MEAN",
    "pooling_mode_cls_token": "CLS",
    "pooling_mode_lasttoken": "LAST",
}


def load_pooler_config(model_dir: str | None, hf_config: Any, encoder_only: bool) -> PoolerConfig:
    matryoshka = bool(getattr(hf_config, "matryoshka_dimensions", None)
                      or getattr(hf_config, "is_matryoshka", False))
    modules = _read_json(model_dir, "modules.json")
    if modules is None:
        return PoolerConfig("CLS" if encoder_only else "LAST", True, matryoshka)
    types = [m.get("type", "") for m in modules]
    pooling_type: PoolingType = "CLS" if encoder_only else "LAST"
    for module in modules:
        if module.get("type", "").endswith(".Pooling"):
            pooling_type = _pooling_type(model_dir, module.get("path", ""))
    normalize = any(t.endswith(".Normalize") for t in types)
    if not encoder_only and pooling_type != "LAST":
        raise ValueError(
            f"{model_dir}: its sentence-transformers config asks for {pooling_type} pooling; a "
            f"decoder served with task 'embed' supports last-token pooling only"
        )
    return PoolerConfig(pooling_type, normalize, matryoshka)


def sentence_max_seq_length(model_dir: str | None) -> int | None:
    """sentence-transformers' truncation length (shorter than the position table for MiniLM)."""
    config = _read_json(model_dir, "sentence_bert_config.json")
    return config.get("max_seq_length") if config else None


def _pooling_type(model_dir: str | None, path: str) -> PoolingType:
    config = _read_json(model_dir, os.path.join(path, "config.json")) or {}
    modes = [mode for key, mode in _POOLING_MODES.items() if config.get(key)]
    unsupported = [k for k in ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
                   if config.get(k)]
    if unsupported or len(modes) != 1:
        raise ValueError(
            f"{model_dir}: unsupported sentence-transformers pooling {config}; one of mean, CLS "
            f"or last-token pooling is supported"
        )
    return modes[0]


def _read_json(model_dir: str | None, name: str) -> Any:
    if model_dir is None:
        return None
    path = os.path.join(model_dir, name)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
