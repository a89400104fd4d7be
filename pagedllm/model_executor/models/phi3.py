"""Phi-3: Llama whose checkpoint already fuses q|k|v (qkv_proj) and gate|up (gate_up_proj), with
"longrope" rotary scaling (short/long per-frequency factors, see layers/rotary.py) and optionally
a partial rotary (`partial_rotary_factor`). Both differences live in the loader mapping and the
rotary layer, so the model is Llama's."""

from __future__ import annotations

from pagedllm.model_executor.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    packed_modules_mapping: dict[str, list[str]] = {}
    """The checkpoint's qkv_proj / gate_up_proj load whole into ours (same names, same rows)."""
