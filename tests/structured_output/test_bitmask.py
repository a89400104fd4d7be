"""The bitmask the scheduler side writes is the mask the runner applies, row for row."""

from __future__ import annotations

import numpy as np
import torch

from pagedllm.sample.ops.grammar_bitmask import apply_token_bitmask, unpack_bitmask
from pagedllm.structured_output.backend import allocate_bitmask, set_only_token


def test_unpack_matches_the_bit_layout():
    rng = np.random.default_rng(0)
    vocab = 1000
    bitmask = rng.integers(-(2**31), 2**31, size=(5, (vocab + 31) // 32), dtype=np.int64
                           ).astype(np.int32)
    allowed = unpack_bitmask(torch.from_numpy(bitmask), vocab).numpy()
    words = bitmask.view(np.uint32)
    expected = np.array([[(int(words[r, t // 32]) >> (t % 32)) & 1 for t in range(vocab)]
                         for r in range(5)], dtype=bool)
    np.testing.assert_array_equal(allowed, expected)


def test_apply_masks_only_the_given_rows():
    vocab = 70
    logits = torch.randn(4, vocab)
    before = logits.clone()
    bitmask = allocate_bitmask(2, vocab)
    set_only_token(bitmask, 0, 69)
    set_only_token(bitmask, 1, 0)
    apply_token_bitmask(logits, torch.from_numpy(bitmask), torch.tensor([2, 0]))
    assert torch.equal(logits[1], before[1]) and torch.equal(logits[3], before[3])
    assert logits[2].argmax() == 69 and torch.isinf(logits[2]).sum() == vocab - 1
    assert logits[0].argmax() == 0 and torch.isinf(logits[0]).sum() == vocab - 1
    assert logits[2, 69] == before[2, 69]
