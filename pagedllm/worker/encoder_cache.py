"""The worker's encoder cache: each image's encoder output, keyed by the image's content hash,
held until the scheduler's EncoderCacheManager evicts it (SchedulerOutput.free_encoder_mm_hashes).

The scheduler owns the accounting (which hashes may be held, within encoder_cache_size embedding
tokens); this holds the tensors. An image is encoded the first time a scheduled chunk reads an
entry this cache lacks: the scheduler has admitted that entry (a hit or a new allocation), so
what is held here is always a subset of what the manager counts, and the size check below only
ever fires on an accounting bug.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class EncoderCache:
    def __init__(self, cache_size: int | None = None) -> None:
        self.cache_size = cache_size
        """The scheduler's budget in embedding tokens (None: unchecked)."""
        self._entries: dict[str, torch.Tensor] = {}
        self.num_tokens = 0
        """Embedding rows held now."""
        self.peak_tokens = 0
        """The most rows held at once (tests check it stays within the budget)."""
        self.num_encoder_runs = 0
        """Images encoded so far: once per image hash while its entry stays cached."""

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def free(self, keys: Iterable[str]) -> None:
        """Drop evicted entries (a hash never encoded here, or already gone, is ignored: the
        scheduler may admit an entry for a chunk that then is not scheduled)."""
        for key in keys:
            rows = self._entries.pop(key, None)
            if rows is not None:
                self.num_tokens -= len(rows)

    def get_or_encode(self, key: str, encode: Callable[[], torch.Tensor]) -> torch.Tensor:
        rows = self._entries.get(key)
        if rows is None:
            rows = encode()
            self.num_encoder_runs += 1
            self._entries[key] = rows
            self.num_tokens += len(rows)
            self.peak_tokens = max(self.peak_tokens, self.num_tokens)
            if self.cache_size is not None and self.num_tokens > self.cache_size:
                raise RuntimeError(
                    f"encoder cache holds {self.num_tokens} embedding tokens, more than its "
                    f"budget of {self.cache_size}: the scheduler's accounting is off")
        return rows
