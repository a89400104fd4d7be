"""What the vision-language models share (LLaVA, LLaVA-NeXT, Qwen2-VL, InternVL): the
language-model half of the wrapper (LM head, logits, `embed_input_ids`,
`forward(inputs_embeds=...)`: LlamaModel's own forward takes the rows the runner merged), the
two-layer projector, and the load-time split of a checkpoint into vision / projector tensors
(plain copies) and decoder tensors (the packed loader: q/k/v -> qkv_proj).

The merge itself is the runner's (worker/mm_embeddings.py): it embeds the prompt's tokens with
`embed_input_ids`, writes each image's `embed_multimodal` rows over its placeholder positions and
calls `forward(input_ids, positions, inputs_embeds=...)`; each model file keeps its tower and its
`embed_multimodal`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pagedllm.model_executor.layers.embedding import ParallelLMHead
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.weight_utils import default_weight_loader, load_packed_weights
from pagedllm.model_executor.models.clip_vision import _activation
from pagedllm.model_executor.models.llama import LlamaForCausalLM


def drops_cls_token(config: Any) -> bool:
    """Whether the tower's features lose their first (CLS) row before the projector:
    vision_feature_select_strategy "default" drops it, "full" keeps it."""
    strategy = config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise ValueError(f"vision_feature_select_strategy {strategy!r} is not supported")
    return strategy == "default"


class MultiModalProjector(nn.Module):
    """[..., in_dim] -> (layer_norm) -> linear_1 -> act -> linear_2 -> [..., text hidden]:
    LLaVA's projector, and InternVL's with a layer norm in front (the checkpoints' names)."""

    def __init__(self, in_dim: int, text_hidden: int, act: str, bias: bool = True,
                 pre_norm: bool = False) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim) if pre_norm else None
        self.linear_1 = nn.Linear(in_dim, text_hidden, bias=bias)
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=bias)
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.linear_2(self.act(self.linear_1(x)))


class VisionLanguageModel(nn.Module):
    """The language-model half of a VLM wrapper and its loader. A subclass builds its tower,
    then calls `init_language_model`; it may override `canonical_name` (the checkpoint layouts'
    names -> ours) and `unused_checkpoint_tensor` (tensors the model does not need)."""

    supports_multimodal = True
    supports_tensor_parallel = True  # (the decoder splits; the vision tower stays replicated)
    supports_pipeline_parallel = True  # (the decoder's layers; the first stage merges images)
    packed_modules_mapping = LlamaForCausalLM.packed_modules_mapping

    def init_language_model(self, language_model: nn.Module, text_config: Any,
                            tie_word_embeddings: bool) -> None:
        self.language_model = language_model
        self.tie_word_embeddings = tie_word_embeddings
        if tie_word_embeddings:
            self.lm_head = language_model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(text_config.vocab_size, text_config.hidden_size,
                                          prefix="lm_head")
        self.logits_processor = LogitsProcessor(text_config.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.embed(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return self.language_model(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        """The decoder's tensors (`language_model.*`, `lm_head.*` once canonical) go through the
        packed loader; the tower's and the projector's are plain copies (their q/k/v stay
        separate)."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        text_weights: list[tuple[str, Any]] = []
        for name, tensor in weights:
            name = self.canonical_name(name)
            if name.startswith(("language_model.", "lm_head.")):
                text_weights.append((name, tensor))
                continue
            if name not in params:
                if self.unused_checkpoint_tensor(name):
                    continue
                raise ValueError(f"checkpoint tensor {name!r} matches no parameter of the model")
            default_weight_loader(params[name], tensor)
            loaded.add(name)
        return loaded | load_packed_weights(self, text_weights, self.packed_modules_mapping,
                                            self._skip_text)

    def canonical_name(self, name: str) -> str:
        return name

    def unused_checkpoint_tensor(self, name: str) -> bool:
        return False

    def _skip_text(self, name: str) -> bool:
        return "rotary_emb.inv_freq" in name or (
            self.tie_word_embeddings and name.startswith("lm_head."))
