"""Multimodal rotary embedding (Qwen2-VL's M-RoPE): the rotary frequencies are split into
three sections (`mrope_section`, summing to head_dim / 2) that rotate by the temporal, the
height and the width position of the token ([3, T] positions). A text token has the same
position in all three rows, which makes it plain RoPE."""

from __future__ import annotations

from typing import Any

import torch

from pagedllm.model_executor.layers.rotary import RotaryEmbedding


class MRotaryEmbedding(RotaryEmbedding):
    def __init__(self, head_dim: int, max_position: int, params: dict[str, Any],
                 mrope_section: list[int]) -> None:
        super().__init__(head_dim, max_position, params)
        if sum(mrope_section) != self.rotary_dim // 2:
            raise ValueError(f"mrope_section {mrope_section} must sum to rotary_dim / 2 = "
                             f"{self.rotary_dim // 2}")
        self.mrope_section = list(mrope_section)

    def forward_cpu(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_native(positions, query, key)

    forward_cuda = forward_cpu

    def forward_native(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        if positions.dim() == 1:  # text only (e.g. a warm-up pass): every row the same
            positions = positions.expand(3, -1)
        cos, sin = self.cos_sin_cache[positions].to(query.dtype).chunk(2, dim=-1)  # [3, T, R/2]
        cos = torch.cat([part[i % 3] for i, part in
                         enumerate(cos.split(self.mrope_section, dim=-1))], dim=-1)
        sin = torch.cat([part[i % 3] for i, part in
                         enumerate(sin.split(self.mrope_section, dim=-1))], dim=-1)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [T, 1, R/2]
        return self._rotate(query, cos, sin), self._rotate(key, cos, sin)
