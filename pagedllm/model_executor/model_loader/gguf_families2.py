"""llama.cpp's `granite`, `granitemoe`, `falcon`, `bloom`, `starcoder` (GPT-BigCode) and `gptj`
GGUFs: their tensor names, the transformers config their metadata stands for, and the layouts
llama.cpp's converter (convert_hf_to_gguf.py; GPT-J: gguf-py's convert-gptj-hf-to-gguf.py) wrote
that we put back, so the models' own loaders read HF checkpoints' names and layouts:

- granite / granitemoe: Llama's names and q/k row permutation (the converter's GraniteModel is a
  LlamaModel; undone by gguf.py's _unpermute_rows); the multipliers as `attention.scale`,
  `embedding_scale`, `residual_scale`, `logit_scale` (written only when set: llama.cpp's graph
  then uses head_dim ** -0.5 and 1). GraniteMoE's input_linear [E, 2I, H] is split into
  ffn_gate_exps / ffn_up_exps [E, I, H]: concatenated back (float, as the other GGUF MoEs'
  experts); output_linear is ffn_down_exps as is.
- falcon: the fused query_key_value regrouped from [kv_heads, G + 2, head_dim] (new layout) to
  q | k | v ("jploski" layout; old multi-query files are q | k | v either way): regrouped back.
  The file says which decoder layout: attn_norm_2 (ln_attn) or more than one KV head is the new
  one; one KV head and one norm is Falcon-7B's multi-query parallel block. llama.cpp runs
  neither ALiBi nor the sequential block, so no file has them. feed_forward_length is written
  as 4 * hidden whatever the model: the MLP width is read from ffn_up's shape.
- bloom: query_key_value from per head [heads, 3, head_dim] to q | k | v: regrouped back; the
  embedding LayerNorm is token_embd_norm; the head is tied unless the file has `output`.
- starcoder: GPT-BigCode's nn.Linear weights as they are (c_attn q | k | v for multi-query);
  the learned positions are position_embd. The converter writes head_count_kv 1 whatever the
  model: multi-query is read from attn_qkv's rows (hidden + 2 * head_dim).
- gptj: names only (q/k rows as HF's: llama.cpp's GPT-J rope pairs adjacent dims as GPT-J
  does); the partial rotary is rope.dimension_count; the LM head keeps its bias (output.bias).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from pagedllm.model_executor.model_loader.gguf_file import GGUFFile
from pagedllm.model_executor.model_loader.gguf_names import (
    LLAMA_BLOCK_NAMES,
    LLAMA_GLOBAL_NAMES,
    table_hf_name,
)

ARCHITECTURES = {
    "granite": "GraniteForCausalLM",
    "granitemoe": "GraniteMoeForCausalLM",
    "falcon": "FalconForCausalLM",
    "bloom": "BloomForCausalLM",
    "starcoder": "GPTBigCodeForCausalLM",
    "gptj": "GPTJForCausalLM",
}
"""GGUF `general.architecture` -> the HF architecture we load it as."""
PERMUTED_QK = {"granite", "granitemoe"}
"""Archs whose q/k rows llama.cpp permutes as Llama's (see gguf._unpermute_rows)."""

_NAMES: dict[str, tuple[dict[str, str], str, dict[str, str]]] = {
    # arch: (global tensors, the layers' prefix, block tensors), by HF checkpoint names
    "granite": (LLAMA_GLOBAL_NAMES, "model.layers", LLAMA_BLOCK_NAMES),
    "granitemoe": (LLAMA_GLOBAL_NAMES, "model.layers", {
        **{k: v for k, v in LLAMA_BLOCK_NAMES.items()
           if not k.startswith(("ffn_gate", "ffn_up", "ffn_down"))},
        "ffn_gate_inp": "block_sparse_moe.router.layer",
        # (gate and up are concatenated into block_sparse_moe.input_linear: to_hf_layout)
        "ffn_gate_exps": "block_sparse_moe.input_linear.gate",
        "ffn_up_exps": "block_sparse_moe.input_linear.up",
        "ffn_down_exps": "block_sparse_moe.output_linear",
    }),
    # Falcon-40B's two norms: attn_norm is ln_mlp (llama.cpp's graph feeds the MLP from it) and
    # attn_norm_2 ln_attn; with one norm attn_norm is input_layernorm (renamed in to_hf_layout)
    "falcon": ({"token_embd": "transformer.word_embeddings", "output_norm": "transformer.ln_f",
                "output": "lm_head"}, "transformer.h", {
        "attn_norm": "input_layernorm",
        "attn_norm_2": "ln_attn",
        "attn_qkv": "self_attention.query_key_value",
        "attn_output": "self_attention.dense",
        "ffn_up": "mlp.dense_h_to_4h",
        "ffn_down": "mlp.dense_4h_to_h",
    }),
    "bloom": ({"token_embd": "transformer.word_embeddings",
               "token_embd_norm": "transformer.word_embeddings_layernorm",
               "output_norm": "transformer.ln_f", "output": "lm_head"}, "transformer.h", {
        "attn_norm": "input_layernorm",
        "attn_qkv": "self_attention.query_key_value",
        "attn_output": "self_attention.dense",
        "ffn_norm": "post_attention_layernorm",
        "ffn_up": "mlp.dense_h_to_4h",
        "ffn_down": "mlp.dense_4h_to_h",
    }),
    "starcoder": ({"token_embd": "transformer.wte", "position_embd": "transformer.wpe",
                   "output_norm": "transformer.ln_f", "output": "lm_head"}, "transformer.h", {
        "attn_norm": "ln_1",
        "attn_qkv": "attn.c_attn",
        "attn_output": "attn.c_proj",
        "ffn_norm": "ln_2",
        "ffn_up": "mlp.c_fc",
        "ffn_down": "mlp.c_proj",
    }),
    "gptj": ({"token_embd": "transformer.wte", "output_norm": "transformer.ln_f",
              "output": "lm_head"}, "transformer.h", {
        "attn_norm": "ln_1",
        "attn_q": "attn.q_proj",
        "attn_k": "attn.k_proj",
        "attn_v": "attn.v_proj",
        "attn_output": "attn.out_proj",
        "ffn_up": "mlp.fc_in",
        "ffn_down": "mlp.fc_out",
    }),
}  # fmt: skip


def hf_name(name: str, arch: str) -> str | None:
    """"blk.3.attn_qkv.weight" -> "transformer.h.3.self_attention.query_key_value.weight"
    (falcon); None if the arch has no such tensor."""
    return table_hf_name(name, *_NAMES[arch])


# --- configs -----------------------------------------------------------------------------


def hf_config(reader: GGUFFile, arch: str, common: dict[str, Any],
              rope_parameters: Callable[[Meta], dict[str, Any]]) -> Any:
    """The transformers config of a file of one of ARCHITECTURES; `common`: gguf.py's
    _common_config (the fields every arch reads the same way); rope_parameters(meta): gguf.py's
    reader of the rope fields (passed in: gguf.py imports this module)."""

    def meta(key: str, default: Any = None) -> Any:
        return reader.fields.get(f"{arch}.{key}", default)

    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    common = {**common, "rope_parameters": rope_parameters(meta)}
    return _CONFIGS[arch](meta, common, shapes)


Meta = Callable[..., Any]
Shapes = dict[str, tuple[int, ...]]
"""GGUF tensor name -> its HF (torch) shape."""


def _tokens_and_tie(common: dict[str, Any]) -> dict[str, Any]:
    keys = ("architectures", "vocab_size", "tie_word_embeddings", "bos_token_id",
            "eos_token_id", "pad_token_id")  # fmt: skip
    return {k: common[k] for k in keys}


def _ffn_width(shapes: Shapes, common: dict[str, Any]) -> int:
    """The MLP width as stored (the falcon / bloom / starcoder / gptj converters write
    feed_forward_length as 4 * hidden whatever the model's)."""
    up = shapes.get("blk.0.ffn_up.weight")
    return up[0] if up else common["intermediate_size"]


def _granite(meta: Meta, common: dict[str, Any], shapes: Shapes, moe: bool = False) -> Any:
    from transformers import GraniteConfig, GraniteMoeConfig

    fields = dict(
        common,
        # the multipliers as llama.cpp's granite graph reads them (absent: its defaults)
        embedding_multiplier=meta("embedding_scale", 1.0),
        residual_multiplier=meta("residual_scale", 1.0),
        attention_multiplier=meta("attention.scale", common["head_dim"] ** -0.5),
        logits_scaling=meta("logit_scale", 1.0),
        attention_bias="blk.0.attn_q.bias" in shapes,
        rope_parameters=common["rope_parameters"],
    )
    if not moe:
        return GraniteConfig(**fields, mlp_bias="blk.0.ffn_up.bias" in shapes)
    if "blk.0.ffn_gate_shexp.weight" in shapes or "blk.0.ffn_gate.weight" in shapes:
        raise ValueError("GGUF granitemoe with a shared MLP (GraniteMoeShared / Granite 4) is "
                         "not supported; its HF checkpoint loads as GraniteMoeHybridForCausalLM")
    gate = shapes["blk.0.ffn_gate_exps.weight"]  # [E, I, H]
    return GraniteMoeConfig(
        **{**fields, "intermediate_size": gate[1]},
        num_local_experts=meta("expert_count", gate[0]),
        num_experts_per_tok=meta("expert_used_count"),
    )


def _falcon(meta: Meta, common: dict[str, Any], shapes: Shapes) -> Any:
    from transformers import FalconConfig

    kv_heads = common["num_key_value_heads"]
    two_norms = "blk.0.attn_norm_2.weight" in shapes
    new_layout = two_norms or kv_heads > 1
    return FalconConfig(
        **_tokens_and_tie(common),
        hidden_size=common["hidden_size"],
        num_hidden_layers=common["num_hidden_layers"],
        num_attention_heads=common["num_attention_heads"],
        num_kv_heads=kv_heads,
        new_decoder_architecture=new_layout,
        num_ln_in_parallel_attn=(2 if two_norms else 1) if new_layout else None,
        multi_query=not new_layout,
        parallel_attn=True,
        alibi=False,
        bias="blk.0.attn_qkv.bias" in shapes,
        ffn_hidden_size=_ffn_width(shapes, common),
        layer_norm_epsilon=meta("attention.layer_norm_epsilon", 1e-5),
        max_position_embeddings=common["max_position_embeddings"],
        rope_parameters=common["rope_parameters"],
    )


def _bloom(meta: Meta, common: dict[str, Any], shapes: Shapes) -> Any:
    from transformers import BloomConfig

    return BloomConfig(
        **_tokens_and_tie(common),
        hidden_size=common["hidden_size"],
        n_layer=common["num_hidden_layers"],
        n_head=common["num_attention_heads"],
        layer_norm_epsilon=meta("attention.layer_norm_epsilon", 1e-5),
        # (no position table: ALiBi; the engine's default length)
        max_position_embeddings=common["max_position_embeddings"],
    )


def _starcoder(meta: Meta, common: dict[str, Any], shapes: Shapes) -> Any:
    from transformers import GPTBigCodeConfig

    hidden, heads = common["hidden_size"], common["num_attention_heads"]
    qkv_rows = shapes["blk.0.attn_qkv.weight"][0]
    return GPTBigCodeConfig(
        **_tokens_and_tie(common),
        n_embd=hidden,
        n_layer=common["num_hidden_layers"],
        n_head=heads,
        n_positions=common["max_position_embeddings"],
        n_inner=_ffn_width(shapes, common),
        multi_query=qkv_rows == hidden + 2 * (hidden // heads),
        layer_norm_epsilon=meta("attention.layer_norm_epsilon", 1e-5),
        # llama.cpp's starcoder graph: ggml_gelu, the tanh approximation (StarCoder's own)
        activation_function="gelu_pytorch_tanh",
    )


def _gptj(meta: Meta, common: dict[str, Any], shapes: Shapes) -> Any:
    from transformers import GPTJConfig

    return GPTJConfig(
        **_tokens_and_tie(common),
        n_embd=common["hidden_size"],
        n_layer=common["num_hidden_layers"],
        n_head=common["num_attention_heads"],
        n_positions=common["max_position_embeddings"],
        n_inner=_ffn_width(shapes, common),
        rotary_dim=meta("rope.dimension_count", common["head_dim"]),
        layer_norm_epsilon=meta("attention.layer_norm_epsilon", 1e-5),
        activation_function="gelu_new",
    )


_CONFIGS: dict[str, Callable[[Meta, dict[str, Any], Shapes], Any]] = {
    "granite": _granite,
    "granitemoe": lambda meta, common, shapes: _granite(meta, common, shapes, moe=True),
    "falcon": _falcon,
    "bloom": _bloom,
    "starcoder": _starcoder,
    "gptj": _gptj,
}


# --- layouts -----------------------------------------------------------------------------


def to_hf_layout(
    reader: GGUFFile, arch: str, weights: Iterator[tuple[str, Any]]
) -> Iterator[tuple[str, Any]]:
    """gguf.py's (HF name, tensor) stream of one of these archs with what the converter
    reshaped put back: Falcon / BLOOM fused q|k|v rows regrouped as their checkpoints hold them,
    Falcon-40B's attn_norm named ln_mlp, GraniteMoE's gate and up experts concatenated."""
    fields = reader.fields
    heads = fields[f"{arch}.attention.head_count"]
    kv_heads = fields.get(f"{arch}.attention.head_count_kv", heads)
    hidden = fields[f"{arch}.embedding_length"]
    two_norms = any(t.name == "blk.0.attn_norm_2.weight" for t in reader.tensors)
    if arch == "bloom":
        kv_heads = heads  # (per head [heads, 3, head_dim] = one "group" per head)
    regroup = _qkv_to_grouped_rows(heads, kv_heads, hidden // heads)
    halves: dict[str, Any] = {}
    for name, tensor in weights:
        if arch in ("falcon", "bloom") and ".query_key_value." in name:
            tensor = _take_rows(tensor, regroup)
        elif arch == "falcon" and two_norms and ".input_layernorm." in name:
            name = name.replace(".input_layernorm.", ".ln_mlp.")
        elif arch == "granitemoe" and ".block_sparse_moe." in name:
            tensor = _float(tensor)  # (routers and experts load as float; see the docstring)
            stem, _, half = name.removesuffix(".weight").rpartition(".")
            if stem.endswith(".input_linear"):  # [E, I, H] gate or up: [E, 2I, H] gate | up
                halves.setdefault(stem, {})[half] = tensor
                if len(halves[stem]) < 2:
                    continue
                pair = halves.pop(stem)
                name, tensor = f"{stem}.weight", torch.cat([pair["gate"], pair["up"]], dim=1)
        elif arch == "starcoder" and ".wpe." in name:
            tensor = _float(tensor)  # (the converter keeps it F32; a quantized one is read so)
        yield name, tensor
    if halves:
        raise ValueError(f"GGUF granitemoe: {sorted(halves)} lack their gate or up experts")


def _qkv_to_grouped_rows(heads: int, kv_heads: int, head_dim: int) -> np.ndarray:
    """Row order turning q | k | v into the grouped [kv_heads, heads / kv_heads + 2, head_dim]
    (each group's queries, then its key and value): Falcon's query_key_value, or BLOOM's per
    head [heads, 3, head_dim] with kv_heads = heads. One KV head: q | k | v, unchanged."""
    group = heads // kv_heads
    q = np.arange(heads * head_dim).reshape(kv_heads, group, head_dim)
    k = heads * head_dim + np.arange(kv_heads * head_dim).reshape(kv_heads, 1, head_dim)
    v = k + kv_heads * head_dim
    return np.concatenate([q, k, v], axis=1).reshape(-1)


def _take_rows(tensor: Any, rows: np.ndarray) -> Any:
    """Rows of a float tensor (weight or bias) or of a GGUF weight still in its blocks (its rows
    are whole blocks apart)."""
    from pagedllm.model_executor.layers.weight_utils import take_rows

    return take_rows(tensor, torch.from_numpy(rows))


def _float(tensor: Any) -> torch.Tensor:
    return tensor if isinstance(tensor, torch.Tensor) else tensor.dequantize()
