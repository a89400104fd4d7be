"""Hugging Face-layout checkpoints: (name, tensor) from *.safetensors, or pytorch_model*.bin."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator

import torch


def checkpoint_files(directory: str) -> list[str]:
    """The weight files of `directory`: safetensors preferred, following an index if present."""
    for pattern, index in (
        ("*.safetensors", "model.safetensors.index.json"),
        ("pytorch_model*.bin", "pytorch_model.bin.index.json"),
    ):
        index_path = os.path.join(directory, index)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            return [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
        files = sorted(glob.glob(os.path.join(directory, pattern)))
        if files:
            return files
    raise ValueError(f"no *.safetensors or pytorch_model*.bin weights in {directory}")


def iterate_hf_weights(directory: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (checkpoint name, CPU tensor) for every tensor of the checkpoint."""
    from tqdm import tqdm

    from pagedllm import envs  # no progress bar in --log-format json logs

    files = checkpoint_files(directory)
    for path in tqdm(files, desc="Loading weights", unit="file", leave=False,
                     disable=envs.log_format() == "json"):
        if path.endswith(".safetensors"):
            yield from _iterate_safetensors(path)
        else:
            yield from torch.load(path, map_location="cpu", weights_only=True).items()


def _iterate_safetensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            yield name, f.get_tensor(name)
