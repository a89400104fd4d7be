"""Helpers for per-row numpy arrays that a persistent batch grows and condenses."""

from __future__ import annotations

import numpy as np


def grown(array: np.ndarray, axis: int, min_size: int) -> np.ndarray:
    """`array` with axis `axis` at least `min_size` long (doubling, zero-filled); itself if it
    is already long enough."""
    size = array.shape[axis]
    if size >= min_size:
        return array
    shape = list(array.shape)
    shape[axis] = max(min_size, 2 * size)
    out = np.zeros(shape, dtype=array.dtype)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out


def positions_within(counts: np.ndarray) -> np.ndarray:
    """[0, 1, ..., c0 - 1, 0, ..., c1 - 1, ...] for counts [c0, c1, ...]: each element's place
    within its segment, for arrays packed segment after segment."""
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - starts
