"""Loading checkpoint tensors into parameters: one `weight_loader` per parameter, and the
name mapping of packed (merged) modules declared as data by each model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

WeightLoader = Callable[..., None]
"""weight_loader(param, loaded_weight, shard_id=None): copy (a shard of) a checkpoint tensor."""


def set_weight_attrs(param: nn.Parameter, **attrs: Any) -> None:
    for key, value in attrs.items():
        assert not hasattr(param, key), f"parameter already has {key!r}"
        setattr(param, key, value)


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
) -> set[str]:
    """Load (checkpoint name, tensor) pairs; return the names of fully loaded parameters.

    packed_modules_mapping: {"qkv_proj": ["q_proj", "k_proj", "v_proj"], ...}: the checkpoint's
    `...q_proj.weight` is shard 0 of our `...qkv_proj.weight`, loaded by its weight_loader.
    A packed parameter counts as loaded once all its shards were.
    """
    params = dict(model.named_parameters())
    shard_of = {
        shard: (packed, i)
        for packed, shards in packed_modules_mapping.items()
        for i, shard in enumerate(shards)
    }
    shards_loaded: Counter[str] = Counter()
    shards_needed: dict[str, int] = {}
    for name, tensor in weights:
        if ignore(name):
            continue
        target, shard_id = _packed_target(name, shard_of)
        if target not in params:
            raise ValueError(f"checkpoint tensor {name!r} matches no parameter of the model")
        param = params[target]
        loader = getattr(param, "weight_loader", default_weight_loader)
        try:
            loader(param, tensor) if shard_id is None else loader(param, tensor, shard_id)
        except ValueError as e:
            raise ValueError(f"loading {name!r}: {e}") from e
        shards_loaded[target] += 1
        packed = target.split(".")[-2]
        shards_needed[target] = len(packed_modules_mapping.get(packed, [None]))
    return {name for name, n in shards_loaded.items() if n >= shards_needed[name]}


def _packed_target(name: str, shard_of: dict[str, tuple[str, int]]) -> tuple[str, int | None]:
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in shard_of:
            packed, shard_id = shard_of[part]
            return ".".join([*parts[:i], packed, *parts[i + 1 :]]), shard_id
    return name, None
