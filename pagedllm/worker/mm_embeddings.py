"""The runner's multimodal step: each image's encoder output computed once per image hash, and
the step's input embeddings with image rows written over their placeholder positions.

An image's embeddings are computed at the first step whose chunk reaches one of its placeholder
tokens (the whole image at once, even if the chunk covers only part of it) and kept in the
encoder cache (worker/encoder_cache.py) under the image's hash until the scheduler evicts it;
later chunks, the same image later in the prompt, other requests with the same image and a
preempted request on its return all slice from the kept rows. A prefix-cache hit that covers an
image's placeholders skips it entirely: those positions are never scheduled.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pagedllm.logger import init_logger
from pagedllm.multimodal.inputs import MultiModalFeature
from pagedllm.multimodal.mrope import mrope_positions
from pagedllm.worker.encoder_cache import EncoderCache

logger = init_logger(__name__)


class MultiModalEmbeddings:
    def __init__(self, model: nn.Module, device: torch.device,
                 encoder_cache_size: int | None = None) -> None:
        self.model = model
        self.device = device
        self._features: dict[str, list[MultiModalFeature]] = {}
        self.encoder_cache = EncoderCache(encoder_cache_size)
        """image hash -> [length, hidden], admitted and evicted by the scheduler."""
        if encoder_cache_size is not None:
            logger.info("encoder cache: up to %d image embedding tokens, keyed by image hash",
                        encoder_cache_size)
        self.mrope_merge_size: int | None = getattr(model, "mrope_spatial_merge_size", None)
        """Qwen2-VL: the model reads [3, T] M-RoPE positions (None: the plain [T] ones)."""

    def add_request(self, req_id: str, features: list[MultiModalFeature] | None) -> None:
        if features:
            self._features[req_id] = features

    @property
    def num_encoder_runs(self) -> int:
        """Images encoded so far (tests check it: once per image hash while cached)."""
        return self.encoder_cache.num_encoder_runs

    def remove_request(self, req_id: str) -> None:
        # (its images' entries stay: the scheduler evicts them when the room is needed)
        self._features.pop(req_id, None)

    def free_encoder_outputs(self, mm_hashes: list[str]) -> None:
        self.encoder_cache.free(mm_hashes)

    def input_embeds(self, input_ids: torch.Tensor, req_ids: list[str], starts: np.ndarray,
                     counts: np.ndarray) -> torch.Tensor | None:
        """The step's [T, hidden] input embeddings, or None when no scheduled token is an
        image placeholder (the model then embeds the ids itself). starts/counts: each
        request's first scheduled position and its number of tokens, in packing order."""
        writes: list[tuple[int, torch.Tensor]] = []
        offset = 0
        for req_id, start, count in zip(req_ids, starts.tolist(), counts.tolist()):
            end = start + count
            for index, feature in enumerate(self._features.get(req_id, ())):
                if not feature.overlaps(start, end):
                    continue
                rows = self._encode(req_id, index, feature)
                lo, hi = max(start, feature.offset), min(end, feature.end)
                writes.append((offset + lo - start,
                               rows[lo - feature.offset : hi - feature.offset]))
            offset += count
        if not writes:
            return None
        embeds = self.model.embed_input_ids(input_ids).clone()
        for at, rows in writes:
            embeds[at : at + len(rows)] = rows.to(embeds.dtype)
        return embeds

    def positions(self, positions: torch.Tensor, req_ids: list[str], starts: np.ndarray,
                  counts: np.ndarray) -> torch.Tensor:
        """The step's positions as the model reads them: unchanged, or [3, T] M-RoPE rows
        computed from each request's images and its chunk's first index (mrope.py)."""
        if self.mrope_merge_size is None:
            return positions
        rows = [mrope_positions(self._features.get(req_id, ()), self.mrope_merge_size,
                                start, count)
                for req_id, start, count in zip(req_ids, starts.tolist(), counts.tolist())]
        return torch.from_numpy(np.concatenate(rows, axis=1)).to(positions.device)

    def _encode(self, req_id: str, index: int, feature: MultiModalFeature) -> torch.Tensor:
        def encode() -> torch.Tensor:
            pixels = torch.from_numpy(feature.pixel_values).unsqueeze(0).to(self.device)
            (rows,) = self.model.embed_multimodal(pixels, feature)
            if len(rows) != feature.length:
                raise RuntimeError(f"image {index} of {req_id}: the encoder gave {len(rows)} "
                                   f"rows for {feature.length} placeholder tokens")
            return rows

        return self.encoder_cache.get_or_encode(feature.identifier, encode)
