"""Loading checkpoint tensors into parameters: one `weight_loader` per parameter, and the
name mapping of packed (merged) modules declared as data by each model."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

WeightLoader = Callable[..., None]
"""weight_loader(param, loaded_weight, shard_id=None): copy (a shard of) a checkpoint tensor."""

NameMapper = Callable[[str], "tuple[str, Any, int] | None"]
"""checkpoint name -> (our parameter name, shard_id, number of shards that fill the parameter),
or None when the name is not one it maps. For names packed_modules_mapping cannot express (MoE
experts: `...experts.3.w1.weight` is shard (3, 0) of our stacked `...experts.gate_up_proj`)."""


def set_weight_attrs(param: nn.Parameter, **attrs: Any) -> None:
    for key, value in attrs.items():
        assert not hasattr(param, key), f"parameter already has {key!r}"
        setattr(param, key, value)


def create_bias(layer: nn.Module, out_features: int, bias: bool, dtype: torch.dtype) -> None:
    """Register `layer.bias` ([out_features], loaded like the weight's shards) or None: the bias
    stays dense whatever the weight's quant method."""
    if not bias:
        layer.register_parameter("bias", None)
        return
    b = torch.empty(out_features, dtype=dtype)
    layer.register_parameter("bias", nn.Parameter(b, requires_grad=False))
    set_weight_attrs(layer.bias, weight_loader=layer.weight_loader)


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(
            f"checkpoint tensor of shape {tuple(loaded.shape)} does not fit a parameter of shape "
            f"{tuple(param.shape)}"
        )
    param.data.copy_(loaded)


def load_packed_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, Any]],
    packed_modules_mapping: dict[str, list[str]],
    ignore: Callable[[str], bool] = lambda name: False,
    name_mappers: Sequence[NameMapper] = (),
) -> set[str]:
    """Load (checkpoint name, tensor) pairs; return the names of fully loaded parameters.

    packed_modules_mapping: {"qkv_proj": ["q_proj", "k_proj", "v_proj"], ...}: the checkpoint's
    `...q_proj.weight` is shard 0 of our `...qkv_proj.weight`, loaded by its weight_loader.
    A packed parameter counts as loaded once all its shards were.
    name_mappers are tried first, in order; the first that maps a name decides its target.
    """
    params = dict(model.named_parameters())
    shard_of = {
        shard: (packed, i)
        for packed, shards in packed_modules_mapping.items()
        for i, shard in enumerate(shards)
    }
    shards_loaded: Counter[str] = Counter()
    shards_needed: dict[str, int] = {}
    # pipeline parallelism: the decoder layers another stage holds (their slots have no weights)
    other_stages = tuple(f"{prefix}." for prefix, module in model.named_modules()
                         if getattr(module, "pp_missing", False))
    for name, tensor in weights:
        if ignore(name):
            continue
        target, shard_id, num_shards = _map_name(
            name, name_mappers, shard_of, packed_modules_mapping
        )
        if target not in params and other_stages and target.startswith(other_stages):
            continue
        shards_needed[target] = num_shards
        if target not in params:
            raise ValueError(f"checkpoint tensor {name!r} matches no parameter of the model")
        param = params[target]
        loader = getattr(param, "weight_loader", default_weight_loader)
        try:
            loader(param, tensor) if shard_id is None else loader(param, tensor, shard_id)
        except ValueError as e:
            raise ValueError(f"loading {name!r}: {e}") from e
        shards_loaded[target] += 1
    return {name for name, n in shards_loaded.items() if n >= shards_needed[name]}


def _map_name(
    name: str,
    name_mappers: Sequence[NameMapper],
    shard_of: dict[str, tuple[str, int]],
    packed_modules_mapping: dict[str, list[str]],
) -> tuple[str, Any, int]:
    """(our parameter name, shard_id or None, number of shards of that parameter)."""
    for mapper in name_mappers:
        mapped = mapper(name)
        if mapped is not None:
            return mapped
    target, shard_id = _packed_target(name, shard_of)
    packed = target.split(".")[-2]
    return target, shard_id, len(packed_modules_mapping.get(packed, [None]))


def _packed_target(name: str, shard_of: dict[str, tuple[str, int]]) -> tuple[str, int | None]:
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in shard_of:
            packed, shard_id = shard_of[part]
            return ".".join([*parts[:i], packed, *parts[i + 1 :]]), shard_id
    return name, None


def take_rows(tensor: Any, rows: torch.Tensor) -> Any:
    """tensor[rows] for a float tensor or for a GGUF weight still in its quantized blocks
    (model_loader.gguf.GGUFWeight, with --quantization gguf): its rows are whole blocks apart."""
    if isinstance(tensor, torch.Tensor):
        return tensor[rows]
    shape = (len(rows), *tensor.shape[1:])
    return dataclasses.replace(tensor, data=tensor.data[rows.numpy()], shape=shape)
