"""Speculative decoding's verify rows: row j of a request that drafted sees its first j drafts as
generated tokens, so its sampling metadata (penalty counts, min_tokens, bad words, ...) equals a
from-scratch build over output + drafts[:j], as if the drafts had been sampled one by one."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np

from pagedllm.sample.metadata import SamplingMetadata, SamplingRow
from pagedllm.worker.input_batch import InputBatch
from pagedllm.worker.model_runner import ModelRunner
from tests.worker.test_input_batch import (
    EOS,
    VOCAB,
    RefRequest,
    assert_same,
    join,
    random_params,
)


def test_verify_rows_count_the_drafts_before_them():
    rng = random.Random(3)
    batch = InputBatch(4, 64, 4, VOCAB, "cpu", EOS)
    refs: dict[str, RefRequest] = {}
    for i in range(12):
        params = random_params(rng)
        params.seed = None  # seeded random requests never draft
        ref = RefRequest(params, [rng.randrange(VOCAB) for _ in range(rng.randint(1, 6))],
                         [rng.choice([4, 5, 9, rng.randrange(VOCAB)])
                          for _ in range(rng.randint(0, 6))])
        refs[f"r{i}"] = ref
        join(batch, f"r{i}", ref)
    req_ids = list(refs)
    drafts = [[rng.choice([4, 5, 6, 7, rng.randrange(VOCAB)]) for _ in range(rng.randint(1, 5))]
              for _ in req_ids]
    for req_id, draft in zip(req_ids, drafts):
        batch.set_drafts(req_id, draft)
    rows = batch.rows(req_ids)
    counts = np.array([len(d) + 1 for d in drafts])
    got = ModelRunner._verify_metadata(SimpleNamespace(input_batch=batch), rows, counts, drafts)
    want = SamplingMetadata.build(
        [SamplingRow(refs[r].params, refs[r].prompt, refs[r].output + draft[:j])
         for r, draft in zip(req_ids, drafts) for j in range(len(draft) + 1)],
        VOCAB, "cpu", EOS)
    assert_same(got, want)
    assert got.penalties is not None and got.bad_words_banned is not None
    assert got.min_tokens_blocked is not None
