"""LLaVA-NeXT / LLaVA-1.6 (LlavaNextForConditionalGeneration): LLaVA-1.5's tower, projector and
decoder, with AnyRes images: the base tile and the tiles of the best grid resolution each go
through the tower; the tiles' features are laid out as one map, unpadded to the image's aspect
ratio and given an `image_newline` row end (multimodal/anyres.py holds the arithmetic, shared
with the API process's token count)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.weight_utils import default_weight_loader
from pagedllm.model_executor.models.llava import LlavaForConditionalGeneration
from pagedllm.multimodal.anyres import tile_grid, unpadded_shape


class LlavaNextForConditionalGeneration(LlavaForConditionalGeneration):
    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__(model_config)
        self.image_newline = nn.Parameter(torch.zeros(self.config.text_config.hidden_size))

    def embed_multimodal(self, pixel_values: torch.Tensor, feature: Any = None) -> torch.Tensor:
        """[1, tiles, 3, H, W] -> [1, tokens, text hidden]: the base tile's rows, then the
        unpadded map of the other tiles row by row, each row ended by image_newline."""
        vision = self.config.vision_config
        tiles = super().embed_multimodal(pixel_values[0])  # [tiles, side * side, hidden]
        base, rest = tiles[0], tiles[1:]
        side = vision.image_size // vision.patch_size
        rows, cols = tile_grid(tuple(feature.image_size), self.config.image_grid_pinpoints,
                               vision.image_size)
        if rest.shape[0] != rows * cols:
            raise RuntimeError(f"{rest.shape[0]} tiles for a {rows}x{cols} grid")
        grid = rest.view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3)
        grid = grid.reshape(grid.shape[0], rows * side, cols * side)  # [hidden, H, W]
        height, width = unpadded_shape(tuple(feature.image_size), rows * side, cols * side)
        top, left = (rows * side - height) // 2, (cols * side - width) // 2
        grid = grid[:, top : top + height, left : left + width]
        newline = self.image_newline.to(grid.dtype)[:, None, None].expand(-1, height, 1)
        grid = torch.cat([grid, newline], dim=-1).flatten(1, 2).transpose(0, 1)
        return torch.cat([base, grid]).unsqueeze(0)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        rest: list[tuple[str, Any]] = []
        loaded: set[str] = set()
        for name, tensor in weights:
            if name in ("image_newline", "model.image_newline"):
                default_weight_loader(self.image_newline, tensor)
                loaded.add("image_newline")
            else:
                rest.append((name, tensor))
        return loaded | super().load_weights(rest)
