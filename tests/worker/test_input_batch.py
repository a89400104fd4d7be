"""InputBatch against a naive reference: random joins, leaves (with the last row moving into the
hole), appends and preemptions keep every row's tokens, block ids and sampling parameters, and the
step's SamplingMetadata (incremental penalty counts included) equals a from-scratch build."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from pagedllm.core.sched.output import NewRequestData
from pagedllm.sample.metadata import SamplingMetadata, SamplingRow
from pagedllm.sample.sampler import Sampler
from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.input_batch import InputBatch

VOCAB = 50
EOS = (2,)


@dataclass
class RefRequest:
    """The naive record: plain lists, recounted from scratch when compared."""

    params: SamplingParams
    prompt: list[int]
    output: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    num_computed: int = 0


BAD_WORDS_IDS = [[6], [4, 5], [5, 4, 4], [4, 5, 9]]
"""Token-level bad words over a small alphabet that the random outputs hit often."""


def random_params(rng: random.Random) -> SamplingParams:
    choice = rng.random
    params = SamplingParams(
        temperature=0.0 if choice() < 0.3 else rng.choice([0.5, 1.0, 1.3]),
        top_k=rng.choice([None, 3, VOCAB + 5]),
        top_p=rng.choice([1.0, 0.9]),
        min_p=rng.choice([0.0, 0.05]),
        presence_penalty=rng.choice([0.0, 0.0, 0.5]),
        frequency_penalty=rng.choice([0.0, 0.0, 0.3]),
        repetition_penalty=rng.choice([1.0, 1.0, 1.2]),
        seed=rng.choice([None, rng.randrange(1000)]),
        min_tokens=rng.choice([0, 0, 3]),
        stop_token_ids=rng.choice([None, [5, 7]]),
        ignore_eos=rng.random() < 0.3,
        logit_bias=rng.choice([None, {1: 2.0, 9: -1.5}]),
        logprobs=rng.choice([None, 0, 2]),
        allowed_token_ids=rng.choice([None, None, [3, 1, 3], list(range(0, VOCAB, 2))]),
    )
    if rng.random() < 0.4:  # as the input processor leaves them
        params._bad_words_token_ids = rng.sample(BAD_WORDS_IDS, rng.randint(1, 3))
    return params


def join(batch: InputBatch, req_id: str, ref: RefRequest) -> None:
    batch.add_request(
        NewRequestData(
            req_id=req_id,
            prompt_token_ids=list(ref.prompt),
            output_token_ids=list(ref.output),
            sampling_params=ref.params,
            block_ids=list(ref.blocks),
            num_computed_tokens=ref.num_computed,
        )
    )


def assert_rows_match(batch: InputBatch, refs: dict[str, RefRequest]) -> None:
    assert sorted(batch.req_ids) == sorted(refs)
    assert {r: i for i, r in enumerate(batch.req_ids)} == batch.row_of  # dense rows
    for req_id, ref in refs.items():
        row = batch.row_of[req_id]
        assert batch.token_ids_of(req_id) == ref.prompt + ref.output
        assert batch.num_prompt_tokens[row] == len(ref.prompt)
        assert batch.num_computed_tokens[row] == ref.num_computed
        assert batch.block_table.block_ids(row) == ref.blocks
        assert not batch.block_table.table[row, len(ref.blocks) :].any()
        assert batch.sampling.params[row] is ref.params


def assert_metadata_matches(batch: InputBatch, refs: dict[str, RefRequest], req_ids: list[str]):
    rows = batch.rows(req_ids)
    got = batch.sampling_metadata(rows)
    sampling_rows = [
        SamplingRow(refs[r].params, refs[r].prompt, refs[r].output) for r in req_ids
    ]
    want = SamplingMetadata.build(sampling_rows, VOCAB, "cpu", EOS)
    assert_same(got, want)
    return got


def assert_same(got: object, want: object, path: str = "metadata") -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), path
        assert got.dtype == want.dtype and torch.equal(got, want), path
    elif hasattr(want, "__dataclass_fields__"):
        for name in want.__dataclass_fields__:
            assert_same(getattr(got, name), getattr(want, name), f"{path}.{name}")
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), path  # type: ignore[attr-defined]
        for key, value in want.items():
            assert_same(got[key], value, f"{path}[{key}]")  # type: ignore[index]
    else:
        assert got == want, path


def test_random_joins_leaves_appends_match_reference():
    rng = random.Random(0)
    # Small sizes so the rows, the token columns and the block table all have to grow.
    batch = InputBatch(2, 4, block_size=2, vocab_size=VOCAB, device=torch.device("cpu"),
                       eos_token_ids=EOS)  # fmt: skip
    refs: dict[str, RefRequest] = {}
    next_id = 0
    masked_steps = prefix_bans = 0
    for _ in range(300):
        op = rng.random()
        if op < 0.25 or not refs:
            prompt = [rng.choice([4, 5, rng.randrange(VOCAB)]) for _ in range(rng.randint(1, 12))]
            ref = RefRequest(random_params(rng), prompt, blocks=[rng.randrange(1, 99)])
            refs[f"r{next_id}"] = ref
            join(batch, f"r{next_id}", ref)
            next_id += 1
        elif op < 0.4:
            req_id = rng.choice(sorted(refs))
            batch.remove_request(req_id)
            del refs[req_id]
        elif op < 0.5:  # preemption: leaves, then comes back with its tokens to recompute
            req_id = rng.choice(sorted(refs))
            batch.remove_request(req_id)
            ref = refs[req_id]
            ref.blocks, ref.num_computed = [rng.randrange(1, 99)], 0
            join(batch, req_id, ref)
        else:  # a step: every request gets blocks, most sample a token
            step_ids = sorted(refs)
            metadata = assert_metadata_matches(batch, refs, step_ids)
            held = batch.sampling.plain_greedy[: batch.num_reqs]
            assert batch.sampling.num_not_plain_greedy == int((~held).sum())
            masked_steps += metadata.bad_words_banned is not None
            masked_steps += metadata.allowed_token_ids is not None
            if metadata.bad_words_banned is not None:  # bans that a generated prefix caused
                prefix_bans += int((metadata.bad_words_banned.tokens != 6).sum())
            sampling = [r for r in step_ids if rng.random() < 0.8]
            for req_id in step_ids:
                ref = refs[req_id]
                new_blocks = [rng.randrange(1, 99) for _ in range(rng.randint(0, 2))]
                ref.blocks += new_blocks
                ref.num_computed += 1
                batch.update_request(req_id, new_blocks, ref.num_computed)
            # Half from the bad words' alphabet, so that their prefixes are often generated.
            tokens = [rng.choice([4, 5, rng.randrange(VOCAB)]) for _ in sampling]
            for req_id, token in zip(sampling, tokens):
                refs[req_id].output.append(token)
            batch.append_sampled(batch.rows(sampling), torch.tensor(tokens, dtype=torch.long))
        assert_rows_match(batch, refs)
    assert next_id > 40 and len(batch.num_tokens) > 2
    assert masked_steps > 50 and prefix_bans > 20


def test_penalty_counts_follow_appends_and_preemption():
    params = SamplingParams(temperature=0.0, repetition_penalty=1.5, frequency_penalty=0.5)
    batch = InputBatch(4, 16, 4, VOCAB, torch.device("cpu"), EOS)
    ref = RefRequest(params, [3, 3, 4])
    join(batch, "a", ref)
    for token in (4, 4, 9):
        batch.append_sampled(batch.rows(["a"]), torch.tensor([token]))
        ref.output.append(token)
    slot = int(batch.sampling.penalty_slot[0])
    counts = batch.sampling.penalties.output_counts[slot]
    assert counts[4] == 2 and counts[9] == 1 and counts.sum() == 3
    assert batch.sampling.penalties.prompt_mask[slot].nonzero().flatten().tolist() == [3, 4]
    # Preempted: its slot is freed; on resumption the output so far is counted again.
    assert batch.sampling.penalties.num_held == 1
    batch.remove_request("a")
    assert slot in batch.sampling.penalties.free_slots
    assert batch.sampling.penalties.num_held == 0
    join(batch, "a", ref)
    assert_metadata_matches(batch, {"a": ref}, ["a"])


def test_rows_without_penalties_hold_no_counts():
    batch = InputBatch(4, 16, 4, VOCAB, torch.device("cpu"), EOS)
    for i in range(4):
        join(batch, str(i), RefRequest(SamplingParams(temperature=0.0), [1, 2, 3]))
    assert batch.sampling.penalties.output_counts.shape[0] == 0
    assert batch.sampling.penalties.num_held == 0
    assert batch.sampling.metadata(batch.rows(["0", "1"]), np.zeros(2, np.int64)).penalties is None


def test_plain_greedy_rows_sample_the_argmax():
    """A row is plain_greedy only where the sampler would do nothing but its argmax (the runner
    then skips the metadata and the sampler): over greedy requests with at most one feature
    that acts on the logits or asks for logprobs, every plain row's metadata holds no transform
    and the sampler's token is the argmax; the featured rows are not plain."""
    rng = random.Random(1)
    features = [
        {}, {}, {"presence_penalty": 0.5}, {"frequency_penalty": 0.3},
        {"repetition_penalty": 1.2}, {"min_tokens": 3}, {"logit_bias": {1: 2.0}},
        {"logprobs": 0}, {"allowed_token_ids": [3, 1]}, {"bad_words": True},
        {"temperature": 0.7}, {"seed": 5, "temperature": 0.7},
    ]  # fmt: skip
    batch = InputBatch(4, 16, 4, VOCAB, torch.device("cpu"), EOS)
    plain = featured = 0
    for i in range(120):
        feature = dict(rng.choice(features))
        bad_words = feature.pop("bad_words", False)
        params = SamplingParams(**{"temperature": 0.0, **feature})
        if bad_words:
            params._bad_words_token_ids = [[6]]
        join(batch, str(i), RefRequest(params, [rng.randrange(VOCAB) for _ in range(5)]))
        rows = batch.rows([str(i)])
        metadata = batch.sampling_metadata(rows)
        if batch.sampling.all_plain_greedy(rows):
            plain += 1
            assert not feature
            transforms = (metadata.penalties, metadata.allowed_token_ids, metadata.logit_bias,
                          metadata.bad_words_banned, metadata.min_tokens_blocked)  # fmt: skip
            assert metadata.all_greedy and all(t is None for t in transforms)
            assert metadata.max_num_logprobs is None
            logits = torch.randn(1, VOCAB)
            out = Sampler().forward(logits.clone(), metadata)
            assert out.logprobs is None and torch.equal(out.sampled_token_ids, logits.argmax(-1))
        else:
            featured += 1
            assert feature or bad_words
        batch.remove_request(str(i))
    assert plain > 10 and featured > 50
