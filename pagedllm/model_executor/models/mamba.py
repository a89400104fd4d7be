"""Mamba (state-spaces/mamba-*-hf), Falcon-Mamba (weightless dt/B/C norms) and Mamba2
(Codestral Mamba, mamba2-*-hf): a stack of Mamba mixers, no attention and no MLP.

Each block is x + mixer(norm(x)) (layers/mamba.py, or layers/mamba2.py for Mamba2; the states
in the per-request state cache; no dt/B/C norms, unlike Jamba). With no attention layer the
paged KV cache holds no bytes: the scheduler still counts blocks per request, which cost nothing
(worker/state_cache.py).

residual_in_fp32 is implied: the residual stream runs in the compute dtype, which is float32 on
a CPU; on a GPU in bf16 the residual is bf16 (transformers keeps it in float32 there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.mamba import MambaMixer, StateSpaceMixer
from pagedllm.model_executor.layers.mamba2 import Mamba2Mixer
from pagedllm.model_executor.layers.mamba_parallel import MAMBA_PARALLEL_REFUSAL
from pagedllm.model_executor.layers.weight_utils import load_packed_weights


def mamba_mixer(config: Any, prefix: str) -> StateSpaceMixer:
    return MambaMixer(
        config.hidden_size, config.intermediate_size, config.state_size, config.conv_kernel,
        config.time_step_rank, config.use_conv_bias, config.use_bias, bc_dt_norm_eps=None,
        prefix=prefix,
    )  # fmt: skip


def falcon_mamba_mixer(config: Any, prefix: str) -> StateSpaceMixer:
    """Mamba's mixer with weightless RMS norms on dt, B and C (mixer_rms_eps)."""
    return MambaMixer(
        config.hidden_size, config.intermediate_size, config.state_size, config.conv_kernel,
        config.time_step_rank, config.use_conv_bias, config.use_bias,
        bc_dt_norm_eps=config.mixer_rms_eps, prefix=prefix, weightless_norms=True,
    )  # fmt: skip


def mamba2_mixer(config: Any, prefix: str) -> StateSpaceMixer:
    return Mamba2Mixer(
        config.hidden_size, int(config.expand * config.hidden_size), config.num_heads,
        config.head_dim, config.n_groups, config.state_size, config.conv_kernel,
        config.use_conv_bias, config.use_bias, config.layer_norm_epsilon,
        config.time_step_limit, prefix,
    )  # fmt: skip


MixerFactory = Callable[[Any, str], StateSpaceMixer]


class MambaBlock(nn.Module):
    def __init__(self, config: Any, build_mixer: MixerFactory, prefix: str) -> None:
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mixer = build_mixer(config, f"{prefix}.mixer")

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states, residual = self.norm(hidden_states, residual)
        return self.mixer(hidden_states), residual


class MambaModel(nn.Module):
    def __init__(self, config: Any, build_mixer: MixerFactory, prefix: str = "backbone") -> None:
        super().__init__()
        self.embeddings = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                 prefix=f"{prefix}.embeddings")
        self.layers = nn.ModuleList(MambaBlock(config, build_mixer, f"{prefix}.layers.{i}")
                                    for i in range(config.num_hidden_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden_states, residual = self.embeddings(input_ids), None
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual)
        hidden_states, _ = self.norm_f(hidden_states, residual)
        return hidden_states


class MambaForCausalLM(nn.Module):
    supports_tensor_parallel = True  # (mixers split by channel / head: layers/mamba_parallel.py)
    supports_pipeline_parallel = False
    parallel_refusal = MAMBA_PARALLEL_REFUSAL  # (-pp only)
    build_mixer: MixerFactory = staticmethod(mamba_mixer)

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        self.config = config
        self.backbone = MambaModel(config, self.build_mixer)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
        if self.tie_word_embeddings:
            self.lm_head = self.backbone.embeddings
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix="lm_head")
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.backbone(input_ids)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        # old checkpoints name the embedding "embedding" (transformers renames it on load too)
        renamed = ((n.replace("backbone.embedding.", "backbone.embeddings."), t)
                   for n, t in weights)
        tied = self.tie_word_embeddings
        return load_packed_weights(self, renamed, {},
                                   lambda name: tied and name.startswith("lm_head."))


class Mamba2ForCausalLM(MambaForCausalLM):
    build_mixer: MixerFactory = staticmethod(mamba2_mixer)


class FalconMambaForCausalLM(MambaForCausalLM):
    build_mixer: MixerFactory = staticmethod(falcon_mamba_mixer)
