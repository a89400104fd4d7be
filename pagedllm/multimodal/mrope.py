"""Qwen2-VL's multimodal rotary positions (M-RoPE): three position rows (temporal, height,
width) per token.

A text token has the same position in all three rows. An image's placeholder tokens, laid out
row-major over its merged grid (t, h, w), sit at base + (t_i, h_i, w_i) where base is the
position the next text token would have had; the text after the image continues at base +
max(h, w) (HF's get_rope_index), not at base + the image's token count. So a token's position
is a pure function of its index in the sequence and the images before it: the runner computes
each step's rows from the request's features and the chunk's first index, which makes chunked
prefill, prefix-cache hits (the chunk starts past the cached prefix), preemption and decode
(index >= prompt length: the index shifted by every image's advance - length, HF's rope_deltas)
all the same computation, with no state carried between steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pagedllm.multimodal.inputs import MultiModalFeature


def mrope_positions(features: Sequence[MultiModalFeature], spatial_merge_size: int,
                    start: int, count: int) -> np.ndarray:
    """[3, count] int64: the positions of sequence indices [start, start + count)."""
    index = np.arange(start, start + count, dtype=np.int64)
    out = np.broadcast_to(index, (3, count)).copy()
    shift = 0  # what the images so far moved the text positions by
    for feature in sorted(features, key=lambda f: f.offset):
        if feature.grid_thw is None:
            raise ValueError("an M-RoPE image needs its grid_thw")
        t, h, w = feature.grid_thw
        h, w = h // spatial_merge_size, w // spatial_merge_size
        if t * h * w != feature.length:
            raise ValueError(f"grid {feature.grid_thw} gives {t * h * w} tokens for "
                             f"{feature.length} placeholders")
        base = feature.offset + shift
        inside = (index >= feature.offset) & (index < feature.end)
        if inside.any():
            k = index[inside] - feature.offset
            out[0, inside] = base + k // (h * w)
            out[1, inside] = base + k % (h * w) // w
            out[2, inside] = base + k % w
        advance = max(h, w) - feature.length
        out[:, index >= feature.end] += advance
        shift += advance
    return out
