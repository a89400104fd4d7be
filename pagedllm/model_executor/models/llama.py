"""The Llama family (Llama 2/3, Mistral, SmolLM, ...) over the paged attention layer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.activation import SiluAndMul
from pagedllm.model_executor.layers.attention import Attention
from pagedllm.model_executor.layers.embedding import LMHead, VocabEmbedding
from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.linear import MergedColumnLinear, QKVLinear, ReplicatedLinear
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.rotary import RotaryEmbedding, rope_parameters
from pagedllm.model_executor.layers.weight_utils import load_packed_weights


class LlamaMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str, bias: bool):
        super().__init__()
        if hidden_act != "silu":
            raise ValueError(f"Llama MLP supports hidden_act='silu' only, got {hidden_act!r}")
        self.gate_up_proj = MergedColumnLinear(hidden_size, [intermediate_size] * 2, bias)
        self.down_proj = ReplicatedLinear(intermediate_size, hidden_size, bias)
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaAttention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, prefix: str) -> None:
        super().__init__()
        num_heads = config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        bias = getattr(config, "attention_bias", False)
        self.qkv_proj = QKVLinear(config.hidden_size, head_dim, num_heads, num_kv_heads, bias)
        self.o_proj = ReplicatedLinear(num_heads * head_dim, config.hidden_size, bias)
        self.split_sizes = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
        self.rotary_emb = rotary_emb
        self.attn = Attention(
            num_heads, head_dim, head_dim**-0.5, num_kv_heads,
            sliding_window=getattr(config, "sliding_window", None), prefix=f"{prefix}.attn",
        )  # fmt: skip

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split(self.split_sizes, dim=-1)
        q, k = self.rotary_emb(positions, q, k)  # [T, H*D], [T, Hkv*D]
        return self.o_proj(self.attn(q, k, v))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, prefix: str) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, rotary_emb, prefix=f"{prefix}.self_attn")
        self.mlp = LlamaMLP(
            config.hidden_size, config.intermediate_size, config.hidden_act,
            getattr(config, "mlp_bias", False),
        )  # fmt: skip
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        hidden_states: torch.Tensor,  # [T, hidden]
        residual: torch.Tensor | None,  # [T, hidden]; None before the first layer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class LlamaModel(nn.Module):
    def __init__(self, config: Any, max_position: int, prefix: str = "model") -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        head_dim = getattr(config, "head_dim", None)
        head_dim = head_dim or config.hidden_size // config.num_attention_heads
        # NOTE: one cos/sin cache shared by every layer.
        rotary_emb = RotaryEmbedding(head_dim, max_position, rope_parameters(config))
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, rotary_emb, prefix=f"{prefix}.layers.{i}")
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)  # [T, hidden]
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class LlamaForCausalLM(nn.Module):
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }
    """Our fused module -> the checkpoint modules stacked into it, in row order."""

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        self.config = config
        self.model = LlamaModel(config, model_config.max_model_len)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = LMHead(config.vocab_size, config.hidden_size)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] long, the requests of the step packed back to back
        positions: torch.Tensor,  # [T] long
    ) -> torch.Tensor:  # [T, hidden]
        return self.model(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] float32."""
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        """Load HF-named tensors; return the names of the parameters that were loaded."""
        return load_packed_weights(self, weights, self.packed_modules_mapping, self._skip)

    def _skip(self, name: str) -> bool:
        # Old checkpoints store the rotary inv_freq; tied checkpoints may repeat the embedding.
        return "rotary_emb.inv_freq" in name or (
            self.tie_word_embeddings and name.startswith("lm_head.")
        )
