"""Seeded random rows: the noise of each draw is a function of (request seed, position).

A seeded request's token at position t is the exponential race argmax(w / q) with q ~ Exp(1)
drawn from a generator seeded by draw_seed(seed, t), one value per vocabulary id. Nothing else
feeds the draw: not the batch, not how many draws the request made before, not preemption. So
speculative decoding can verify a draft for position t by computing exactly the token plain
decoding would have sampled there (same logits, same noise) and accepting the draft iff it is
that token: the output is identical with and without drafts, not only equal in distribution.
(A stream of draws from one persistent generator could not do that: how many values a verify
step consumes depends on how many drafts fit into the step.)
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def draw_seed(seed: int, position: int) -> int:
    """The generator seed of a seeded request's draw for the token at `position` (its index in
    prompt + output). Mixed so that nearby seeds and positions give unrelated streams."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ position) >> 1  # < 2^63: any generator


def seeded_exponentials(generator: torch.Generator, seed: int, vocab_size: int) -> torch.Tensor:
    """[vocab_size] Exp(1) noise of one draw, indexed by token id."""
    generator.manual_seed(seed)
    noise = torch.empty(vocab_size, device=generator.device)
    return noise.exponential_(generator=generator)
