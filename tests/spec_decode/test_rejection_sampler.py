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
