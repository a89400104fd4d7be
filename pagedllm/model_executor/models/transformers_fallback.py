"""The Transformers fallback: a decoder-only architecture with no native implementation runs on
transformers' own modeling code, with its attention routed through our paged KV cache.

    our packed batch [T] ──▶ hf base model (input_ids [1, T], position_ids [1, T] = our positions)
                                 └─ each attention module calls the registered "pagedllm"
                                    attention function ──▶ layers.Attention (paged cache write +
                                    backend attention, read from the step's forward context)

The whole step is one "sequence" for transformers; requests are kept apart by our attention
metadata (query_start_loc, block tables), never by a transformers mask (none is built for a
custom attention implementation). Continuous batching, chunked prefill and prefix caching work
unchanged, since the KV cache is ours.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.attention import Attention, layer_sliding_window
from pagedllm.model_executor.layers.weight_utils import load_packed_weights
from pagedllm.model_executor.models.transformers_tp import shard_by_tp_plan

ATTN_IMPLEMENTATION = "pagedllm"


def paged_attention_forward(
    module: nn.Module,
    query: torch.Tensor,  # [1, num_heads, T, head_dim]
    key: torch.Tensor,  # [1, num_kv_heads, T, head_dim]
    value: torch.Tensor,  # [1, num_kv_heads, T, head_dim]
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:  # [1, T, num_heads, head_dim]
    """transformers' attention-function signature over our paged attention layer."""
    layer: Attention = module.pagedllm_attn
    num_tokens = query.shape[2]
    q, k, v = (x[0].transpose(0, 1).reshape(num_tokens, -1) for x in (query, key, value))
    out = layer(q, k, v)  # [T, num_heads * head_dim]
    return out.view(1, num_tokens, layer.num_heads, layer.head_size), None


def supports_architecture(architecture: str) -> bool:
    """transformers has a causal-LM class of that name (the fallback can build it)."""
    import transformers

    return architecture.endswith("ForCausalLM") and hasattr(transformers, architecture)


class TransformersForCausalLM(nn.Module):
    """forward(input_ids, positions) / compute_logits / load_weights over an HF causal LM."""

    supports_tensor_parallel = True
    """By the config's base_model_tp_plan (transformers_tp.py; refused, with the reason, where
    there is none or it has styles the fallback does not split)."""
    parallel_refusal = ("transformers runs the whole decoder stack in one forward call: it can "
                        "neither stop after a stage's layers nor start from hidden states "
                        "received from the previous stage")
    """Why -pp is refused (-tp runs; the loader names this reason only for what is refused)."""

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        from transformers import AttentionInterface, AutoModelForCausalLM

        AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention_forward)
        config = copy.deepcopy(model_config.hf_config)
        self.config = config
        self.hf_model = AutoModelForCausalLM.from_config(
            config, attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.get_default_dtype(),
            trust_remote_code=False,  # never a model folder's own code (auto_map)
        )
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        shard_by_tp_plan(self.hf_model, config, model_config.architecture)
        self._attach_paged_attention(model_config)

    def _attach_paged_attention(self, model_config: ModelConfig) -> None:
        """One paged Attention layer per transformers attention module (by its layer_idx)."""
        modules = [m for m in self.hf_model.modules()
                   if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx")]
        if len(modules) != model_config.num_hidden_layers:
            raise ValueError(
                f"{model_config.architecture}: found {len(modules)} attention modules with a "
                f"layer_idx for {model_config.num_hidden_layers} layers; the Transformers "
                f"fallback cannot route its attention"
            )
        head_dim = model_config.head_dim
        for module in sorted(modules, key=lambda m: m.layer_idx):
            scale = getattr(module, "scaling", None) or head_dim**-0.5
            module.pagedllm_attn = Attention(
                model_config.num_attention_heads, head_dim, scale, model_config.num_kv_heads,
                sliding_window=layer_sliding_window(self.config, module.layer_idx),
                prefix=f"layers.{module.layer_idx}.attn",
            )  # fmt: skip

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] long, the requests of the step packed back to back
        positions: torch.Tensor,  # [T] long
    ) -> torch.Tensor:  # [T, hidden]
        out = self.hf_model.base_model(
            input_ids=input_ids[None], position_ids=positions[None], use_cache=False
        )
        return out.last_hidden_state[0]

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] float32."""
        return self.hf_model.get_output_embeddings()(hidden_states).float()

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        prefixed = ((f"hf_model.{name}", tensor) for name, tensor in weights)
        return load_packed_weights(self, prefixed, {}, self._skip)

    def _skip(self, name: str) -> bool:
        return "rotary_emb.inv_freq" in name or (
            self.tie_word_embeddings and name.startswith("hf_model.lm_head.")
        )
