"""Verification keeps greedy output exact and sampled output distributed as the target, even
with drafts the target dislikes."""

from __future__ import annotations

import pytest
import torch

from pagedllm.sample.metadata import SamplingMetadata, SamplingRow
from pagedllm.sample.rejection_sampler import RejectionSampler
from pagedllm.sample.sampler import Sampler
from pagedllm.sampling_params import SamplingParams

VOCAB = 12


def metadata(params: SamplingParams, num_rows: int) -> SamplingMetadata:
    rows = [SamplingRow(params, [1], []) for _ in range(num_rows)]
    return SamplingMetadata.build(rows, VOCAB, "cpu")


def test_greedy_keeps_the_agreeing_prefix_then_the_argmax():
    # request 0: rows 0..3 (3 drafts, the last wrong), request 1: rows 4..6 (2 right drafts)
    logits = torch.randn(7, VOCAB)
    best = logits.argmax(dim=1).tolist()
    drafts = [[best[0], best[1], (best[2] + 1) % VOCAB], [best[4], best[5]]]
    out = RejectionSampler(Sampler()).forward(logits.clone(), metadata(
        SamplingParams(temperature=0), 7), drafts)
    assert out.token_ids == [[best[0], best[1], best[2]], [best[4], best[5], best[6]]]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=5),
    SamplingParams(temperature=1.3, top_p=0.8, min_p=0.02),
])
@pytest.mark.parametrize("draft_rank", [0, 3, VOCAB - 1])  # the likeliest, a middling, the worst
def test_sampled_tokens_follow_the_target_distribution(params, draft_rank):
    torch.manual_seed(0)
    base = torch.randn(VOCAB) * 2
    draft = int(base.argsort(descending=True)[draft_rank])
    trials = 40_000
    # each trial: one draft token then the bonus row; the first emitted token is compared
    logits = base.repeat(2 * trials, 1)
    out = RejectionSampler(Sampler()).forward(logits, metadata(params, 2 * trials),
                                              [[draft]] * trials)
    first = torch.tensor([tokens[0] for tokens in out.token_ids])
    observed = torch.bincount(first, minlength=VOCAB).float() / trials
    target = _target(base, params)
    tv = 0.5 * (observed - target).abs().sum().item()
    assert tv < 0.015, (tv, observed, target)
    # what the one-token sampler gives for the same logits: the same distribution
    accepted = sum(len(t) == 2 for t in out.token_ids) / trials
    assert abs(accepted - target[draft].item()) < 0.015


def _target(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The target distribution by brute force: temperature, top-k, min-p, top-p."""
    scaled = logits / params.temperature
    probs = scaled.softmax(dim=0)
    order = probs.argsort(descending=True)
    keep = torch.zeros(VOCAB, dtype=torch.bool)
    kept_mass, kept = 0.0, []
    limit = params.top_k or VOCAB
    for rank, token in enumerate(order.tolist()):
        if rank >= limit or probs[token] < params.min_p * probs[order[0]]:
            break
        kept.append(token)
    total = probs[kept].sum()
    for token in kept:
        if kept_mass >= params.top_p * total:
            break
        keep[token] = True
        kept_mass += probs[token].item()
    out = torch.where(keep, probs, torch.zeros_like(probs))
    return out / out.sum()


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=5),
    SamplingParams(temperature=1.3, top_p=0.8, min_p=0.02),
])
@pytest.mark.parametrize("bad_q", ["reversed", "peaked_on_worst"])
def test_drafts_sampled_from_a_bad_draft_distribution_keep_the_target(params, bad_q):
    """A draft model's drafts (sampled from its q) are accepted with min(1, p/q) and
    resampled from max(p - q, 0): the emitted tokens follow p however wrong q is."""
    torch.manual_seed(1)
    base = torch.randn(VOCAB) * 2
    if bad_q == "reversed":  # likes what the target dislikes
        q = (-base).softmax(dim=0)
    else:  # nearly all of its mass on the target's least likely token
        q = torch.full((VOCAB,), 0.05 / (VOCAB - 1))
        q[base.argmin()] = 0.95
    trials = 40_000
    # each trial: two drafts of q, then the bonus row
    drafts = torch.multinomial(q, 2 * trials, replacement=True).view(trials, 2)
    logits = base.repeat(3 * trials, 1)
    draft_probs = q.repeat(3 * trials, 1)
    out = RejectionSampler(Sampler()).forward(logits, metadata(params, 3 * trials),
                                              drafts.tolist(), draft_probs)
    target = _target(base, params)
    # the first token; and the second where the first draft was accepted (every row has the
    # same logits, so it too follows p)
    for position, bound in ((0, 0.015), (1, 0.03)):
        tokens = torch.tensor([t[position] for t in out.token_ids if len(t) > position])
        observed = torch.bincount(tokens, minlength=VOCAB).float() / len(tokens)
        tv = 0.5 * (observed - target).abs().sum().item()
        assert tv < bound, (position, len(tokens), tv, observed, target)
    accepted = sum(len(t) >= 2 for t in out.token_ids) / trials
    assert abs(accepted - torch.minimum(target, q).sum().item()) < 0.015


def test_greedy_rows_ignore_draft_probabilities():
    logits = torch.randn(4, VOCAB)
    best = logits.argmax(dim=1).tolist()
    drafts = [[best[0], best[1], (best[2] + 1) % VOCAB]]
    q = torch.rand(4, VOCAB)
    out = RejectionSampler(Sampler()).forward(logits.clone(), metadata(
        SamplingParams(temperature=0), 4), drafts, q)
    assert out.token_ids == [[best[0], best[1], best[2]]]
