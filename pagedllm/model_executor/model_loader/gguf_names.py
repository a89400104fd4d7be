"""llama.cpp tensor names -> HF checkpoint names: Llama's tables, which most GGUF archs start
from, and the one lookup every arch's table goes through (gguf.py, gguf_families2.py and
gguf_families_qwen_gemma.py each hold their archs' tables, not their own lookup)."""

from __future__ import annotations

LLAMA_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
LLAMA_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
"""llama.cpp block tensor -> the HF module under model.layers.<i>, for a Llama block."""


def table_hf_name(name: str, global_names: dict[str, str], layers: str,
                  block_names: dict[str, str], bare: dict[str, str] | None = None) -> str | None:
    """"blk.3.attn_q.weight" -> f"{layers}.3.{block_names['attn_q']}.weight", "output.weight"
    -> f"{global_names['output']}.weight"; None if the tables have no such tensor.

    A block module whose HF name ends in `_bias` is a bare tensor (DeepSeek's router bias,
    llama.cpp's `exp_probs_b.bias`): it takes no suffix. `bare`: block tensors llama.cpp stores
    without a suffix ("blk.0.ssm_a", Mamba's A and D)."""
    parts = name.split(".")
    if bare and len(parts) == 3 and parts[0] == "blk" and parts[2] in bare:
        return f"{layers}.{parts[1]}.{bare[parts[2]]}"
    stem, _, suffix = name.rpartition(".")
    parts = stem.split(".")
    if len(parts) == 1 and parts[0] in global_names:
        return f"{global_names[parts[0]]}.{suffix}"
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in block_names:
        module = block_names[parts[2]]
        if module.endswith("_bias") and suffix == "bias":
            return f"{layers}.{parts[1]}.{module}"
        return f"{layers}.{parts[1]}.{module}.{suffix}"
    return None
