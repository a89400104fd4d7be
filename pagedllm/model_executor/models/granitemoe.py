"""IBM Granite MoE (granite-3.x-*a*-moe, PowerMoE): Granite (see granite.py: the four scalar
multipliers, the residual one folded into the weights at load) whose MLP is a mixture of
experts: a bias-free router picks the top num_experts_per_tok of num_local_experts SwiGLU
experts, weighted by the softmax over the chosen logits (= the renormalized top-k softmax, the
FusedMoE routing).

Checkpoints store each layer's experts stacked: block_sparse_moe.input_linear [E, 2I, H]
(gate | up rows, FusedMoE's gate_up_proj layout), output_linear [E, H, I] and router.layer
[E, H]. The MoE block is not one the fused CPU stack computes: it runs eagerly (logged).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from pagedllm.model_executor.layers.weight_utils import load_packed_weights
from pagedllm.model_executor.models.granite import (
    GraniteDecoderLayer,
    GraniteForCausalLM,
    GraniteModel,
)
from pagedllm.model_executor.models.mixtral import MixtralSparseMoeBlock

_RENAMES = [
    (re.compile(r"\.block_sparse_moe\.input_linear\.weight$"), ".mlp.experts.gate_up_proj"),
    (re.compile(r"\.block_sparse_moe\.output_linear\.weight$"), ".mlp.experts.down_proj"),
    (re.compile(r"\.block_sparse_moe\.router\.layer\.weight$"), ".mlp.gate.weight"),
]
"""GraniteMoE checkpoint names -> ours (the stacked expert tensors load whole)."""


class GraniteMoeMoE(MixtralSparseMoeBlock):
    """Mixtral's block: a replicated router, top-k of the experts, renormalized softmax (its
    own name in the fused stack's log of what it declines)."""


class GraniteMoeDecoderLayer(GraniteDecoderLayer):
    def build_mlp(self, config: Any, layer_idx: int, prefix: str) -> nn.Module:
        # NOTE: held as `mlp`; the checkpoint's "block_sparse_moe" is renamed to it at load.
        return GraniteMoeMoE(config, prefix)


class GraniteMoeModel(GraniteModel):
    decoder_layer_cls = GraniteMoeDecoderLayer


class GraniteMoeForCausalLM(GraniteForCausalLM):
    model_cls = GraniteMoeModel
    residual_scaled = (".self_attn.o_proj.", ".mlp.experts.down_proj")
    """(the weighted sum of the experts' outputs scales with their down projections)"""

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        folded = self.fold_residual_multiplier(self._rename(weights))
        return load_packed_weights(self, folded, self.packed_modules_mapping, self._skip)

    def _rename(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        for name, tensor in weights:
            for pattern, replacement in _RENAMES:
                name = pattern.sub(replacement, name)
            yield name, tensor
