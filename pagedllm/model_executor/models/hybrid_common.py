"""The shell the Mamba-hybrid decoders share (Jamba, Bamba, Granite 4.0 hybrid): the model loop
(token embedding -> decoder layers with a running residual -> final RMSNorm), the layer's
mixer dispatch (Mamba or attention) and pre-norm block, the CausalLM wrapper (tied or separate LM
head, logits processor, the packed loader) and the mixture-of-experts
block (a replicated router, then FusedMoE). What differs between the families is data: the
checkpoint's names for the final norm (`norm`, `final_layernorm`) and the router (`router`,
`gate`), Granite's embedding multiplier and logits scaling, whether the top-k weights are
renormalized. Each family's file keeps its layer's modules, its attention and its weight renames.

Tensor parallelism splits the mixers by channel / head (layers/mamba_parallel.py), attention by
heads and the MLP / experts as Llama's and FusedMoE's; pipeline parallelism is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.linear import ReplicatedLinear
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.mamba_parallel import MAMBA_PARALLEL_REFUSAL
from pagedllm.model_executor.layers.moe import FusedMoE
from pagedllm.model_executor.layers.weight_utils import NameMapper, load_packed_weights

LayerFactory = Callable[[int, str], nn.Module]
"""(layer index, module prefix) -> a decoder layer whose forward is
(positions, hidden_states, residual) -> (hidden_states, residual)."""


class RouterExperts(nn.Module):
    """hidden [T, H] -> a replicated router's logits [T, E] -> FusedMoE's softmax top-k mix.

    The router is registered under `router_name`, the checkpoint's name for it (Jamba's
    `router`, Granite 4's `gate` once renamed), so the loader needs no mapping for it."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, intermediate_size: int,
                 hidden_act: str, *, renormalize: bool, prefix: str,
                 router_name: str = "gate") -> None:
        super().__init__()
        self.router_name = router_name
        self.add_module(router_name, ReplicatedLinear(hidden_size, num_experts,
                                                      prefix=f"{prefix}.{router_name}"))
        self.experts = FusedMoE(num_experts, top_k, hidden_size, intermediate_size, hidden_act,
                                renormalize=renormalize, prefix=f"{prefix}.experts")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        router = self._modules[self.router_name]
        return self.experts(hidden_states, router(hidden_states))


class HybridDecoderLayer(nn.Module):
    """A hybrid's decoder layer: its mixer is `mamba` (a state-space mixer, hidden -> hidden)
    where `is_mamba`, else `self_attn` ((positions, hidden) -> hidden). The forward is the plain
    pre-norm block, x + mixer(input_layernorm(x)), then + feed_forward(pre_ff_layernorm(.))
    (Jamba's, Bamba's); a subclass builds the modules and may replace the forward."""

    is_mamba: bool

    def mix(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.is_mamba:
            return self.mamba(hidden_states)
        return self.self_attn(positions, hidden_states)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states, residual = self.pre_ff_layernorm(self.mix(positions, hidden_states),
                                                        residual)
        return self.feed_forward(hidden_states), residual


class HybridDecoderModel(nn.Module):
    """embed_tokens (times embedding_multiplier, when given) -> layers -> the final RMSNorm,
    registered under `norm_name` (the checkpoint's name for it)."""

    def __init__(self, config: Any, make_layer: LayerFactory, *, prefix: str = "model",
                 norm_name: str = "norm", embedding_multiplier: float | None = None) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   prefix=f"{prefix}.embed_tokens")
        self.embedding_multiplier = embedding_multiplier
        self.layers = nn.ModuleList(make_layer(i, f"{prefix}.layers.{i}")
                                    for i in range(config.num_hidden_layers))
        self.norm_name = norm_name
        self.add_module(norm_name, RMSNorm(config.hidden_size, config.rms_norm_eps))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)  # [T, H]
        if self.embedding_multiplier is not None:
            hidden_states = hidden_states * self.embedding_multiplier
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self._modules[self.norm_name](hidden_states, residual)
        return hidden_states


class HybridForCausalLM(nn.Module):
    """model_cls(hf_config, max_model_len) under `model`, the LM head (the token embedding when
    tied) and the logits processor (times logits_scale). Subclasses set model_cls and may rename
    checkpoint tensors (`rename_weights`) or map them (`weight_name_mappers`)."""

    supports_tensor_parallel = True  # (mixers split by channel / head: layers/mamba_parallel.py)
    supports_pipeline_parallel = False
    parallel_refusal = MAMBA_PARALLEL_REFUSAL  # (-pp only)
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }
    model_cls: ClassVar[Callable[[Any, int], nn.Module]]

    def __init__(self, model_config: ModelConfig, logits_scale: float = 1.0) -> None:
        super().__init__()
        config = model_config.hf_config
        self.config = config
        self.model = self.model_cls(config, model_config.max_model_len)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix="lm_head")
        self.logits_processor = LogitsProcessor(config.vocab_size, scale=logits_scale)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        tied = self.tie_word_embeddings
        return load_packed_weights(self, self.rename_weights(weights),
                                   self.packed_modules_mapping,
                                   lambda name: tied and name.startswith("lm_head."),
                                   name_mappers=self.weight_name_mappers())

    def rename_weights(self, weights: Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
        return weights

    def weight_name_mappers(self) -> Sequence[NameMapper]:
        return ()
