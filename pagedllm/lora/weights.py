"""Loading a checked PEFT adapter's tensors (safetensors only) and placing them on our layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from pagedllm.lora.peft_config import PEFTAdapter


@dataclass
class LoRAWeights:
    """An adapter ready for a slot: per (our module, output slice) its A [r, in] and its B
    [out_i, r] with the scaling folded in, in the compute dtype, on the CPU."""

    lora_int_id: int
    rank: int
    slices: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]


def load_lora_weights(lora_int_id: int, name: str, adapter: PEFTAdapter,
                      targets: dict[str, tuple[str, int]], shapes: dict[str, tuple[int, list[int]]],
                      dtype: torch.dtype, other_stages: tuple[str, ...] = ()) -> LoRAWeights:
    """targets: checkpoint module (model.layers.0.self_attn.q_proj) -> (our module, slice);
    shapes: our module -> (in, out per slice). ValueError for a module the model lacks or a
    tensor of the wrong shape. other_stages: module prefixes (`model.layers.2.`) of the decoder
    layers other pipeline stages hold: their tensors are theirs to load, skipped here."""
    tensors = load_file(adapter.weights_path, device="cpu")
    slices: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
    by_module = {(t.module, t.kind): t.key for t in adapter.tensors}
    for module in adapter.modules:
        if module not in targets:
            if other_stages and module.startswith(other_stages):
                continue
            raise ValueError(f"LoRA {name!r}: {module} is not a linear layer of this model that "
                             f"takes an adapter")
        ours, index = targets[module]
        a = tensors[by_module[(module, "A")]]
        b = tensors[by_module[(module, "B")]]
        in_size, out_sizes = shapes[ours]
        if a.shape[1] != in_size or b.shape[0] != out_sizes[index]:
            raise ValueError(
                f"LoRA {name!r}: {module} maps {a.shape[1]} -> {b.shape[0]} features, the model's "
                f"layer {in_size} -> {out_sizes[index]} (an adapter of another base model?)")
        b = b.to(torch.float32) * adapter.scaling
        slices[(ours, index)] = (a.to(dtype).contiguous(), b.to(dtype).contiguous())
    return LoRAWeights(lora_int_id, adapter.rank, slices)
