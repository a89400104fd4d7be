"""DeepSeek-V2 and DeepSeek-V3: Llama's pre-norm block with multi-head latent attention (MLA) and,
from layer first_k_dense_replace on, a fine-grained mixture of experts with shared experts.

Attention (layers/mla_attention.py has the cache side):
    q            = q_proj(x)  or  q_b_proj(q_a_layernorm(q_a_proj(x)))   (q_lora_rank: V2-Lite none)
                   per head [q_nope: Dn | q_pe: R]
    [c ; k_pe]   = kv_a_proj_with_mqa(x);  c = kv_a_layernorm(c)          L + R: what is cached
    kv_b_proj    = per head [W_UK: Dn rows | W_UV: Dv rows] over the L latent dims
The query is absorbed into latent space (q_nope W_UK), the heads attend over the cached latents,
and their latent outputs go up through W_UV and o_proj: full K/V never exist. The rotary of the
q_pe / k_pe dims pairs adjacent dims in the checkpoint (V2 always, V3 with rope_interleave); their
rows are reordered at load so our rotate-half rotary computes the same (exact: q_pe and k_pe get
the same permutation). Softmax scale: qk_head_dim ** -0.5, times mscale^2 under YaRN with
mscale_all_dim (as transformers' yarn_apply_mscale).

Routing (float32, as transformers): V2 softmax scores, top-k over all experts ("greedy") or within
the topk_group best of n_group groups by their best expert ("group_limited_greedy"); V3 sigmoid
scores plus e_score_correction_bias for the choice only, groups ranked by their two best, the
chosen experts weighted by their uncorrected scores. Weights renormalized when norm_topk_prob,
then multiplied by routed_scaling_factor; the shared experts (one SwiGLU MLP of n_shared_experts *
moe_intermediate_size) are added unweighted.

Runs eagerly: neither the attention nor the MoE block is one the fused CPU stack computes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.grouped_topk import deepseek_v2_topk, deepseek_v3_topk
from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from pagedllm.model_executor.layers.mla_attention import MLAAttention
from pagedllm.model_executor.layers.moe import ExpertWeightMapper, FusedMoE
from pagedllm.model_executor.layers.rotary import RotaryEmbedding, rope_parameters
from pagedllm.model_executor.layers.rotary_yarn import yarn_get_mscale
from pagedllm.model_executor.layers.weight_utils import load_packed_weights
from pagedllm.model_executor.models.llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
)

LATENT_NORM_EPS = 1e-6
"""q_a_layernorm / kv_a_layernorm: transformers (and DeepSeek's code) build them with the
RMSNorm default, not config.rms_norm_eps."""


def softmax_scale(config: Any) -> float:
    scale = (config.qk_nope_head_dim + config.qk_rope_head_dim) ** -0.5
    params = rope_parameters(config)
    if params["rope_type"] != "default" and params.get("mscale_all_dim"):
        mscale = yarn_get_mscale(params["factor"], params["mscale_all_dim"])
        scale = scale * mscale * mscale
    return scale


class DeepseekV2MLAAttention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, prefix: str) -> None:
        super().__init__()
        hidden, bias = config.hidden_size, getattr(config, "attention_bias", False)
        heads = config.num_attention_heads  # (all ranks together)
        self.qk_nope_head_dim = config.qk_nope_head_dim
        self.qk_rope_head_dim = config.qk_rope_head_dim
        self.v_head_dim = config.v_head_dim
        self.kv_lora_rank = config.kv_lora_rank
        qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        self.q_lora_rank = config.q_lora_rank
        if self.q_lora_rank is None:
            self.q_proj = ColumnParallelLinear(hidden, heads * qk_head_dim,
                                               prefix=f"{prefix}.q_proj")  # fmt: skip
        else:
            self.q_a_proj = ReplicatedLinear(hidden, self.q_lora_rank, bias,
                                             prefix=f"{prefix}.q_a_proj")  # fmt: skip
            self.q_a_layernorm = RMSNorm(self.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = ColumnParallelLinear(self.q_lora_rank, heads * qk_head_dim,
                                                 prefix=f"{prefix}.q_b_proj")  # fmt: skip
        self.kv_a_proj_with_mqa = ReplicatedLinear(
            hidden, self.kv_lora_rank + self.qk_rope_head_dim, bias,
            prefix=f"{prefix}.kv_a_proj_with_mqa",
        )  # fmt: skip
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = ColumnParallelLinear(
            self.kv_lora_rank, heads * (self.qk_nope_head_dim + self.v_head_dim),
            prefix=f"{prefix}.kv_b_proj",
        )  # fmt: skip
        self.o_proj = RowParallelLinear(heads * self.v_head_dim, hidden, bias,
                                        prefix=f"{prefix}.o_proj")  # fmt: skip
        # NOTE: this rank's heads (all of them at tensor-parallel size 1): q_proj / q_b_proj and
        # kv_b_proj are split by heads, the latent (kv_a_proj_with_mqa) is replicated
        per_head = self.qk_nope_head_dim + self.v_head_dim
        self.num_heads = self.kv_b_proj.output_size_per_partition // per_head
        self.rotary_emb = rotary_emb
        # NOTE: the model's heads (Attention takes this rank's share of them); the latent cache
        # is head-free, so under tensor parallelism every rank caches the whole latent (one
        # "KV head" replicated over the ranks) and attends its own heads over it.
        self.attn = MLAAttention(heads, self.kv_lora_rank, self.qk_rope_head_dim,
                                 softmax_scale(config), prefix=f"{prefix}.attn")  # fmt: skip
        assert self.attn.num_heads == self.num_heads, (self.attn.num_heads, self.num_heads)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        num_tokens, heads, rope = hidden_states.shape[0], self.num_heads, self.qk_rope_head_dim
        q = self._query(hidden_states).view(num_tokens, heads, -1)
        q_nope, q_pe = q.split([self.qk_nope_head_dim, rope], dim=-1)  # [T, H, Dn], [T, H, R]
        latent, k_pe = self.kv_a_proj_with_mqa(hidden_states).split([self.kv_lora_rank, rope],
                                                                     dim=-1)  # fmt: skip
        latent, _ = self.kv_a_layernorm(latent.contiguous())  # [T, L]
        q_pe, k_pe = self.rotary_emb(positions, q_pe.reshape(num_tokens, heads * rope),
                                     k_pe.contiguous())  # fmt: skip
        w_uk, w_uv = self._up_projections(q_nope.dtype)
        q_latent = torch.einsum("thd,hdl->thl", q_nope, w_uk)  # [T, H, L]
        out = self.attn(q_latent, q_pe.view(num_tokens, heads, rope), latent, k_pe)
        out = torch.einsum("thl,hvl->thv", out, w_uv)  # [T, H, Dv]
        return self.o_proj(out.reshape(num_tokens, heads * self.v_head_dim))

    def _query(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, H * (Dn + R)]
        if self.q_lora_rank is None:
            return self.q_proj(hidden_states)
        q_a, _ = self.q_a_layernorm(self.q_a_proj(hidden_states))
        return self.q_b_proj(q_a)

    def _up_projections(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b_proj's weight split per head: W_UK [H, Dn, L], W_UV [H, Dv, L] (views)."""
        weight = self.kv_b_proj.weight
        if not weight.dtype.is_floating_point:
            raise ValueError("MLA absorbs kv_b_proj's weight into the query and output: it must "
                             "stay a float weight (not quantized)")
        per_head = weight.view(self.num_heads, self.qk_nope_head_dim + self.v_head_dim, -1)
        w_uk, w_uv = per_head.split([self.qk_nope_head_dim, self.v_head_dim], dim=1)
        return w_uk.to(dtype), w_uv.to(dtype)  # (a half weight kept for the kernels: widened)


class DeepseekV2MoE(nn.Module):
    """Routed experts by grouped top-k plus the shared experts."""

    sigmoid_routing = False
    """V3's routing whatever the config says (GLM-4-MoE's block sets it)."""

    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        hidden, num_experts = config.hidden_size, config.n_routed_experts
        self.config = config
        self.is_v3 = (self.sigmoid_routing
                      or getattr(config, "model_type", None) == "deepseek_v3"
                      or getattr(config, "topk_method", None) == "noaux_tc")  # fmt: skip
        # the router: replicated, never quantized (see quantization.base.ROUTER_GATES)
        self.gate = ReplicatedLinear(hidden, num_experts, prefix=f"{prefix}.gate")
        if self.is_v3:  # (on the gate, where the checkpoint keeps it, as vLLM does)
            self.gate.e_score_correction_bias = nn.Parameter(
                torch.zeros(num_experts, dtype=torch.float32), requires_grad=False
            )
        self.experts = FusedMoE(
            num_experts, config.num_experts_per_tok, hidden, config.moe_intermediate_size,
            config.hidden_act, renormalize=bool(config.norm_topk_prob), prefix=f"{prefix}.experts",
        )  # fmt: skip
        self.shared_experts = None
        if getattr(config, "n_shared_experts", None):
            self.shared_experts = LlamaMLP(
                hidden, config.moe_intermediate_size * config.n_shared_experts, config.hidden_act,
                bias=False, prefix=f"{prefix}.shared_experts",
            )  # fmt: skip

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        # router in float32 whatever the model dtype (transformers keeps the gate float32)
        router_logits = F.linear(hidden_states.float(), self.gate.weight.float())  # [T, E]
        weights, ids = self._route(router_logits)
        out = self.experts.forward_routed(hidden_states, weights, ids)
        if self.shared_experts is not None:
            out = out + self.shared_experts(hidden_states)
        return out

    def _route(self, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        if self.is_v3:
            return deepseek_v3_topk(
                router_logits, self.gate.e_score_correction_bias, c.num_experts_per_tok,
                c.n_group, c.topk_group, bool(c.norm_topk_prob), c.routed_scaling_factor,
            )  # fmt: skip
        return deepseek_v2_topk(
            router_logits, c.num_experts_per_tok, c.topk_method, c.n_group, c.topk_group,
            bool(c.norm_topk_prob), c.routed_scaling_factor,
        )  # fmt: skip


def is_moe_layer(config: Any, layer_idx: int) -> bool:
    return (
        bool(getattr(config, "n_routed_experts", None))
        and layer_idx >= config.first_k_dense_replace
        and layer_idx % (getattr(config, "moe_layer_freq", None) or 1) == 0
    )


class DeepseekV2DecoderLayer(LlamaDecoderLayer):
    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> nn.Module:
        return DeepseekV2MLAAttention(config, rotary_emb, prefix)

    def build_mlp(self, config: Any, layer_idx: int, prefix: str) -> nn.Module:
        if is_moe_layer(config, layer_idx):
            return DeepseekV2MoE(config, prefix)
        return super().build_mlp(config, layer_idx, prefix)


class DeepseekV2Model(LlamaModel):
    decoder_layer_cls = DeepseekV2DecoderLayer

    def build_rotary_embs(self, config: Any, max_position: int) -> list[RotaryEmbedding]:
        # rotary over the qk_rope_head_dim dims only (one cos/sin cache for every layer)
        params = {**rope_parameters(config), "partial_rotary_factor": 1.0}
        rotary_emb = RotaryEmbedding(config.qk_rope_head_dim, max_position, params)
        return [rotary_emb] * config.num_hidden_layers


def rope_rows_to_neox(tensor: torch.Tensor, block: int, rope_start: int,
                      rope_dim: int) -> torch.Tensor:  # fmt: skip
    """Within each block of `block` rows, rows [rope_start, rope_start + rope_dim) from the
    adjacent-pairs rotary layout to rotate-half ([0, 2, 4, ..., 1, 3, 5, ...]); others stay."""
    rope = torch.cat([torch.arange(0, rope_dim, 2), torch.arange(1, rope_dim, 2)]) + rope_start
    order = torch.cat([torch.arange(rope_start), rope, torch.arange(rope_start + rope_dim, block)])
    per_block = tensor.reshape(-1, block, *tensor.shape[1:])
    return per_block[:, order].reshape(tensor.shape)


class DeepseekV2ForCausalLM(LlamaForCausalLM):
    packed_modules_mapping = {"gate_up_proj": ["gate_proj", "up_proj"]}
    """(MLA's projections load as they are: q_proj is not a q/k/v shard here.)"""
    model_cls = DeepseekV2Model

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__(model_config)
        self.interleaved_rope = self.rope_is_interleaved(self.config)

    @staticmethod
    def rope_is_interleaved(config: Any) -> bool:
        return True  # V2's checkpoint rotary is always the complex (adjacent pairs) one

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        """Per-expert gate_proj / up_proj / down_proj into the stacked experts (stacked ones load
        whole); rope rows to rotate-half; the rest as Llama's."""
        experts = ExpertWeightMapper(
            self.config.n_routed_experts, gate="gate_proj", up="up_proj", down="down_proj"
        )
        return load_packed_weights(self, self._hf_to_ours(weights), self.packed_modules_mapping,
                                   self._skip, name_mappers=[experts])  # fmt: skip

    def _hf_to_ours(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        c = self.config
        rope, nope, latent = c.qk_rope_head_dim, c.qk_nope_head_dim, c.kv_lora_rank
        for name, tensor in _from_llama_cpp_layout(weights):
            if self.interleaved_rope:
                if name.endswith((".q_proj.weight", ".q_b_proj.weight")):
                    tensor = rope_rows_to_neox(tensor, nope + rope, nope, rope)
                elif ".kv_a_proj_with_mqa." in name:
                    tensor = rope_rows_to_neox(tensor, latent + rope, latent, rope)
            yield name, tensor

    def _skip(self, name: str) -> bool:
        # V3 checkpoints carry their multi-token-prediction layers after the decoder layers
        parts = name.split(".")
        if len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit():
            if int(parts[2]) >= self.config.num_hidden_layers:
                return True
        return super()._skip(name)


def _from_llama_cpp_layout(weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """Undo what llama.cpp's converter reshapes (GGUF files; HF checkpoints pass unchanged):
    routed experts stacked per projection ([E, out, in] `mlp.experts.gate_proj.weight`) back to
    one matrix per expert, and kv_b_proj rebuilt from its split k_b_proj ([H, L, Dn], transposed)
    and v_b_proj ([H, Dv, L]) halves."""
    k_b: dict[str, torch.Tensor] = {}
    v_b: dict[str, torch.Tensor] = {}
    for name, tensor in weights:
        stem, _, leaf = name.rpartition(".self_attn.")
        if leaf in ("k_b_proj.weight", "v_b_proj.weight"):
            (k_b if leaf.startswith("k") else v_b)[stem] = _dense(tensor)
            if stem in k_b and stem in v_b:
                per_head = torch.cat([k_b.pop(stem).transpose(1, 2), v_b.pop(stem)], dim=1)
                yield f"{stem}.self_attn.kv_b_proj.weight", per_head.flatten(0, 1)
            continue
        prefix, _, proj = name.rpartition(".mlp.experts.")
        if proj in ("gate_proj.weight", "up_proj.weight", "down_proj.weight"):
            for expert, matrix in enumerate(_dense(tensor)):
                yield f"{prefix}.mlp.experts.{expert}.{proj}", matrix
            continue
        yield name, tensor
    assert not k_b and not v_b, f"unpaired k_b/v_b halves: {sorted(k_b) + sorted(v_b)}"


def _dense(tensor: Any) -> torch.Tensor:
    """A float tensor (a GGUF weight kept in its quantized blocks is dequantized)."""
    return tensor if isinstance(tensor, torch.Tensor) else tensor.dequantize()


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    @staticmethod
    def rope_is_interleaved(config: Any) -> bool:
        return bool(getattr(config, "rope_interleave", True))
