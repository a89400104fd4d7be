"""The Llama family (Llama 2/3, Mistral, SmolLM, ...) over the paged attention layer.

The building blocks are shared by the families that differ from Llama in a detail only (Qwen2's
q/k/v bias, Qwen3's per-head q/k norm, Gemma's norm and activation): they subclass the layer or
model and override one `build_*` hook or class attribute, so each family's file lists only what
makes it different.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.distributed import get_pp_group, pp_layer_range
from pagedllm.model_executor.layers.activation import get_act_and_mul
from pagedllm.model_executor.layers.attention import Attention, layer_sliding_window
from pagedllm.model_executor.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.rotary import RotaryEmbedding, rope_parameters
from pagedllm.model_executor.layers.weight_utils import load_packed_weights

LayerRunner = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]
]
"""(positions [T], hidden_states [T, hidden], residual [T, hidden] | None) -> (hidden_states,
residual) after every decoder layer: a decoder layer's forward, for the whole stack."""


def head_dim_of(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class LlamaMLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x)); SwiGLU for Llama, GeGLU for Gemma."""

    def __init__(
        self, hidden_size: int, intermediate_size: int, hidden_act: str, bias: bool, prefix: str
    ) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden_size, [intermediate_size] * 2, bias, prefix=f"{prefix}.gate_up_proj"
        )
        self.down_proj = RowParallelLinear(
            intermediate_size, hidden_size, bias, prefix=f"{prefix}.down_proj"
        )
        self.act_fn = get_act_and_mul(hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaAttention(nn.Module):
    """qkv projection -> (optional per-head q/k norm) -> rotary -> paged attention -> o_proj.

    qkv_bias / o_bias: bias on the q/k/v and on the output projection (Llama: both or neither;
    Qwen2: q/k/v only). qk_norm: the norm class applied to each head of q and k before rotary
    (Qwen3, Gemma 3), None for none. scale defaults to head_dim ** -0.5.
    """

    def __init__(
        self,
        config: Any,
        rotary_emb: RotaryEmbedding,
        layer_idx: int,
        prefix: str,
        *,
        qkv_bias: bool = False,
        o_bias: bool = False,
        qk_norm: type[RMSNorm] | None = None,
        scale: float | None = None,
        logits_soft_cap: float | None = None,
    ) -> None:
        super().__init__()
        num_heads = config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        self.head_dim = head_dim = head_dim_of(config)
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, head_dim, num_heads, num_kv_heads, qkv_bias,
            prefix=f"{prefix}.qkv_proj",
        )  # fmt: skip
        self.o_proj = RowParallelLinear(
            num_heads * head_dim, config.hidden_size, o_bias, prefix=f"{prefix}.o_proj"
        )
        # this rank's q | k | v columns (all heads at tensor-parallel size 1)
        self.split_sizes = list(self.qkv_proj.output_sizes_per_partition)
        self.q_norm = qk_norm(head_dim, config.rms_norm_eps) if qk_norm else None
        self.k_norm = qk_norm(head_dim, config.rms_norm_eps) if qk_norm else None
        self.rotary_emb = rotary_emb
        self.attn = Attention(
            num_heads, head_dim, scale or head_dim**-0.5, num_kv_heads,
            sliding_window=layer_sliding_window(config, layer_idx),
            logits_soft_cap=logits_soft_cap, prefix=f"{prefix}.attn",
        )  # fmt: skip

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split(self.split_sizes, dim=-1)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self._norm_heads(self.q_norm, q), self._norm_heads(self.k_norm, k)
        q, k = self.rotary_emb(positions, q, k)  # [T, H*D], [T, Hkv*D]
        return self.o_proj(self.attn(q, k, v))

    def _norm_heads(self, norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
        num_tokens = x.shape[0]
        # [T, heads * D] -> [T * heads, D] rows: each head normed as one row (the fused CPU
        # stack norms the same rows with the same kernel)
        normed, _ = norm(x.reshape(-1, self.head_dim))
        return normed.view(num_tokens, -1)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.)); residual adds fused in the norms."""

    norm_cls: type[RMSNorm] = RMSNorm

    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str):
        super().__init__()
        self.self_attn = self.build_attention(config, rotary_emb, layer_idx, f"{prefix}.self_attn")
        self.mlp = self.build_mlp(config, layer_idx, f"{prefix}.mlp")
        self.input_layernorm = self.norm_cls(config.hidden_size, norm_eps(config))
        self.post_attention_layernorm = self.norm_cls(config.hidden_size, norm_eps(config))

    def build_mlp(self, config: Any, layer_idx: int, prefix: str) -> nn.Module:
        """The feed-forward block (mixture-of-experts families override it)."""
        return LlamaMLP(
            config.hidden_size, config.intermediate_size, _hidden_act(config),
            getattr(config, "mlp_bias", False), prefix,
        )  # fmt: skip

    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        bias = getattr(config, "attention_bias", False)
        return LlamaAttention(config, rotary_emb, layer_idx, prefix, qkv_bias=bias, o_bias=bias)

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


def norm_eps(config: Any) -> float:
    # LayerNorm families (StableLM) name it layer_norm_eps; the RMSNorm ones rms_norm_eps.
    eps = getattr(config, "rms_norm_eps", None)
    return eps if eps is not None else config.layer_norm_eps


def _hidden_act(config: Any) -> str:
    # Gemma 2/3 name it hidden_activation; the rest hidden_act.
    return getattr(config, "hidden_activation", None) or config.hidden_act


class PPMissingLayer(nn.Module):
    """The slot of a decoder layer another pipeline stage runs (no weights, never called)."""

    pp_missing = True
    """(load_packed_weights skips checkpoint tensors under such a slot: another stage's.)"""


def other_stage_layer(name: str, model: LlamaModel) -> bool:
    """Whether checkpoint tensor `name` (`<prefix>.layers.<i>....`) is a decoder layer another
    pipeline stage holds."""
    parts = name.split(".")
    if len(parts) < 3 or parts[1] != "layers" or not parts[2].isdigit():
        return False
    return not model.start_layer <= int(parts[2]) < model.end_layer


class LlamaModel(nn.Module):
    decoder_layer_cls: type[nn.Module] = LlamaDecoderLayer
    norm_cls: type[RMSNorm] = RMSNorm

    def __init__(self, config: Any, max_position: int, prefix: str = "model") -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, prefix=f"{prefix}.embed_tokens"
        )
        self.hidden_size = config.hidden_size
        rotary_embs = self.build_rotary_embs(config, max_position)
        # pipeline parallelism: this stage's layers; the others' slots hold PPMissingLayer
        self.start_layer, self.end_layer = pp_layer_range(config.num_hidden_layers)
        self.layers = nn.ModuleList(
            self.decoder_layer_cls(config, rotary_embs[i], i, prefix=f"{prefix}.layers.{i}")
            if self.start_layer <= i < self.end_layer else PPMissingLayer()
            for i in range(config.num_hidden_layers)
        )
        self.norm = self.norm_cls(config.hidden_size, norm_eps(config))
        self.layer_runner: LayerRunner | None = None
        """Runs all of `layers` in one call where the worker installed a faster execution
        strategy for them (worker/execution_strategy.py); None: each layer runs as a module."""

    def build_rotary_embs(self, config: Any, max_position: int) -> list[RotaryEmbedding]:
        """The rotary embedding of each layer."""
        # NOTE: one cos/sin cache shared by every layer.
        rotary_emb = RotaryEmbedding(head_dim_of(config), max_position, rope_parameters(config))
        return [rotary_emb] * config.num_hidden_layers

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, hidden]
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """inputs_embeds: [T, hidden] rows to run instead of embedding input_ids (VLMs: text and
        image rows the runner merged; read on the first pipeline stage only)."""
        pp = get_pp_group()
        if pp.is_first_rank:
            hidden_states = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
            residual = None
        else:  # the previous stage's (hidden_states, residual), stacked: [2, T, hidden]
            received = pp.recv_prev((2, input_ids.shape[0], self.hidden_size),
                                    self.embed_tokens.activation_dtype)
            hidden_states, residual = received[0], received[1]
        if self.layer_runner is not None:
            hidden_states, residual = self.layer_runner(positions, hidden_states, residual)
        else:
            for layer in self.layers[self.start_layer : self.end_layer]:
                hidden_states, residual = layer(positions, hidden_states, residual)
        if not pp.is_last_rank:
            # NOTE: only the last stage samples; the earlier ones learn the sampled tokens
            # from the scheduler's next step (CachedRequestData.new_token_ids), so a stage is
            # free for the next micro-batch as soon as its layers are done
            pp.send_next(torch.stack([hidden_states, residual]))
            return hidden_states
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class LlamaForCausalLM(nn.Module):
    supports_tensor_parallel = True
    """Every layer is a parallel role and attention works per head (families whose q/k norm
    spans all heads set it False)."""
    supports_pipeline_parallel = True
    """LlamaModel builds only its stage's layers and passes hidden states between stages."""
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }
    """Our fused module -> the checkpoint modules stacked into it, in row order."""
    model_cls: type[LlamaModel] = LlamaModel

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        self.config = config
        self.model = self.model_cls(config, model_config.max_model_len)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix="lm_head")
        self.logits_processor = LogitsProcessor(
            config.vocab_size, soft_cap=getattr(config, "final_logit_softcapping", None)
        )

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
        # Old checkpoints store the rotary inv_freq; tied checkpoints may repeat the embedding;
        # another pipeline stage loads its own layers.
        return "rotary_emb.inv_freq" in name or (
            self.tie_word_embeddings and name.startswith("lm_head.")
        ) or self._other_stage(name)

    def _other_stage(self, name: str) -> bool:
        return other_stage_layer(name, self.model)
