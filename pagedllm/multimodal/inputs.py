"""What a request carries of its images to the engine core and the worker (plain data, no torch:
it crosses the process boundary and the scheduler reads it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MultiModalFeature:
    """One image of a prompt: its pixel inputs and the prompt positions its embeddings fill."""

    modality: str
    """"image"."""
    identifier: str
    """Hash of the image's content (mode, size, pixels): the prefix cache mixes it into the keys
    of the blocks holding its placeholder tokens, so two images never share KV."""
    offset: int
    """Prompt position of the first placeholder token."""
    length: int
    """Number of placeholder tokens (= the encoder's output rows for this image)."""
    pixel_values: np.ndarray
    """float32, as the model's image processor made it: [3, H, W] (LLaVA-1.5), [patches, 3, H,
    W] (LLaVA-NeXT's base image and tiles), [patches, C * T * P * P] (Qwen2-VL)."""
    grid_thw: tuple[int, int, int] | None = None
    """Qwen2-VL: the image's (temporal, height, width) patch grid before the spatial merge; the
    encoder and the M-RoPE positions of its placeholder tokens read it."""
    image_size: tuple[int, int] | None = None
    """LLaVA-NeXT: the original (height, width), which picks the tiling and the unpadding."""

    @property
    def end(self) -> int:
        return self.offset + self.length

    def overlaps(self, start: int, end: int) -> bool:
        """Whether positions [start, end) hold any of this image's placeholder tokens."""
        return self.offset < end and start < self.end
