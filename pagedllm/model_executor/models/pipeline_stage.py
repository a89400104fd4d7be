"""Pipeline parallelism for a plain decoder stack: the stage logic shared by the families whose
model is embed -> layers -> final norm (GPT-NeoX, GPT-2, GPT-BigCode, GPT-J, Phi, OPT, Falcon,
BLOOM). LlamaModel and its subclasses keep their own copy of the same steps.

Stage s of pipeline_parallel_size builds decoder layers [start_layer, end_layer)
(pp_layer_range) and a PPMissingLayer in every other slot, so load_packed_weights (and the LoRA
manager) skip the checkpoint tensors of the other stages' layers. In forward, the first stage
embeds; a later one receives the previous stage's activations instead. The last stage applies
the final norm (the sampler's input); the others send what their layers produced on.

What a stage sends depends on how the family's layers carry the residual stream: pre-norm
families with the residual add fused into the next norm return (hidden_states, residual) whose
sum is the stream, and both are sent stacked [2, T, hidden]; families whose layers return the
stream as one tensor (BLOOM, OPT's post-norm layout) send [T, hidden].
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from pagedllm.distributed import get_pp_group, pp_layer_range
from pagedllm.model_executor.models.llama import PPMissingLayer

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")
"""The decoder-layer index in a checkpoint name (`gpt_neox.layers.3.`, `transformer.h.3.`,
`h.3.` in the prefix-less GPT-2 / BLOOM checkpoints)."""

FinalNorm = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
"""(hidden_states, residual | None) -> the stack's output: the last stage's final norm."""


def add_and_norm(norm: nn.Module) -> FinalNorm:
    """The final norm of a family whose norms fuse the residual add: norm(hidden + residual)."""
    return lambda hidden_states, residual: norm(hidden_states, residual)[0]


class PipelineStageStack(nn.Module):
    """Base of a decoder stack that runs split into pipeline stages.

    A subclass builds its layer list with `build_stage_layers`, then in forward:
        hidden_states, residual = self.stage_input(num_tokens, embed)
        for layer in self.stage_layers(layers): ...
        return self.stage_output(hidden_states, residual, final_norm)
    """

    carries_residual: bool = True
    """The layers return (hidden_states, residual), both sent to the next stage; False: the
    stream as one tensor (residual always None). OPT sets it per instance (its layout)."""
    start_layer: int = 0
    end_layer: int = 0
    stage_hidden_size: int = 0
    stage_dtype: torch.dtype = torch.float32

    def build_stage_layers(
        self, num_layers: int, hidden_size: int, build_layer: Callable[[int], nn.Module]
    ) -> nn.ModuleList:
        """All num_layers slots: build_layer(i) for this stage's, PPMissingLayer for the rest.
        hidden_size: the width of the activations passed between stages."""
        self.start_layer, self.end_layer = pp_layer_range(num_layers)
        self.stage_hidden_size = hidden_size
        # (what the embedding returns: the default dtype the model is built under)
        self.stage_dtype = torch.get_default_dtype()
        return nn.ModuleList(
            build_layer(i) if self.start_layer <= i < self.end_layer else PPMissingLayer()
            for i in range(num_layers)
        )

    def own_layer_weights(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        """The checkpoint's tensors less those of the layers another stage holds, dropped before
        a family's per-tensor reordering reads them (load_packed_weights would skip them too,
        but only after that work)."""
        for name, tensor in weights:
            match = _LAYER_INDEX.search(name)
            if match and not self.start_layer <= int(match.group(1)) < self.end_layer:
                continue
            yield name, tensor

    def stage_layers(self, layers: nn.ModuleList) -> nn.ModuleList:
        """This stage's layers, in order."""
        return layers[self.start_layer : self.end_layer]

    def stage_input(
        self, num_tokens: int, embed: Callable[[], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden_states [T, hidden], residual [T, hidden] | None) the stage's first layer
        reads: embed() on the first stage, the previous stage's output on the others."""
        pp = get_pp_group()
        if pp.is_first_rank:
            return embed(), None
        if not self.carries_residual:
            return pp.recv_prev((num_tokens, self.stage_hidden_size), self.stage_dtype), None
        received = pp.recv_prev((2, num_tokens, self.stage_hidden_size), self.stage_dtype)
        return received[0], received[1]

    def stage_output(
        self, hidden_states: torch.Tensor, residual: torch.Tensor | None, final_norm: FinalNorm
    ) -> torch.Tensor:
        """The last stage: final_norm(hidden_states, residual). An earlier one sends its layers'
        output to the next stage and returns hidden_states (which nothing samples)."""
        pp = get_pp_group()
        if pp.is_last_rank:
            return final_norm(hidden_states, residual)
        # NOTE: only the last stage samples; the earlier ones learn the sampled tokens from the
        # scheduler's next step, so a stage is free for the next micro-batch once this is sent
        if self.carries_residual:
            if residual is None:
                raise RuntimeError(
                    f"{type(self).__name__}: a stage with no layer has no residual to send"
                )
            pp.send_next(torch.stack([hidden_states, residual]))
        else:
            pp.send_next(hidden_states)
        return hidden_states
