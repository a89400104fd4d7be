"""RejectionSampler: verify drafted tokens against the target model in one pass.

A request that drafted k tokens has k + 1 logits rows this step: row j scores the position
after draft j - 1 (row 0: after its last accepted token). Drafts are checked in order and the
request emits the accepted prefix plus one token of the target model's own:

- greedy rows: draft j is accepted while it equals the target's argmax at row j; the first
  mismatch emits the argmax instead, and when all k are accepted the argmax of row k is a bonus.
  So the output is exactly what decoding one token at a time gives (the kernels give a row the
  same numbers whether it is computed alone or as one of k + 1 query rows).
- random rows: the drafts are one-hot proposals (n-gram lookups have no probabilities), so
  draft j is accepted with probability p_j(draft_j), p_j the target's distribution after
  temperature, top-k, top-p and min-p; a rejection emits a sample of p_j with the draft's token
  removed (renormalized), and all-accepted emits a bonus sample of p_k. Each emitted token then
  follows the target distribution exactly (the standard speculative sampling argument with a
  point-mass draft: P(t) = p(d)[t = d] + (1 - p(d)) p(t)[t != d] / (1 - p(d)) = p(t)).
- random rows with draft probabilities (a draft model drew draft_j from its distribution q_j):
  draft j is accepted with probability min(1, p_j(d) / q_j(d)); a rejection emits a sample of
  normalize(max(p_j - q_j, 0)). Then P(t) = min(p(t), q(t)) + (1 - sum min(p, q)) *
  max(p(t) - q(t), 0) / sum max(p - q, 0) = p(t), since both sums equal 1 - sum min(p, q).
  This needs the draft to really be a sample of q (a draft chosen otherwise, e.g. q's argmax,
  must go the one-hot way, which is exact for any draft chosen independently of the target).
- seeded random rows: the row samples exactly what decoding one token at a time would sample
  there (the same processed logits, and the noise of the request's seed at that position,
  ops/seeded.py), and the draft is accepted iff it is that token. So like greedy rows, a seeded
  request emits the same tokens with and without drafts, whatever the batch; its acceptance
  rate is the chance that the drafted token is the one drawn (p(d) for a one-hot draft, as
  above; a draft model drafting with the same noise is coupled to the target's draw).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pagedllm.core.sched.output import LogprobsLists
from pagedllm.sample.metadata import SamplingMetadata
from pagedllm.sample.ops.argmax import argmax_rows
from pagedllm.sample.ops.logprobs import gather_logprobs
from pagedllm.sample.ops.topk_topp import nucleus_candidates
from pagedllm.sample.sampler import Sampler, exponential_race


@dataclass
class VerifiedTokens:
    token_ids: list[list[int]]
    """Per request: the accepted drafts, then one token of the target model's."""
    logprobs: list[LogprobsLists | None]
    """Per request: one row per emitted token (None: it asked for no logprobs)."""


class RejectionSampler:
    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    @torch.inference_mode()
    def forward(self, logits: torch.Tensor, metadata: SamplingMetadata,
                drafts: Sequence[Sequence[int]],
                draft_probs: torch.Tensor | None = None) -> VerifiedTokens:
        """logits [N, V] and metadata rows: request after request, len(drafts[r]) + 1 rows
        each. draft_probs [N, V]: q of the distribution each draft was sampled from, on the
        row that verifies it (bonus, greedy and seeded rows are ignored); None: one-hot
        drafts."""
        logits = logits.float()
        raw_logprobs = self.sampler.process(logits, metadata)
        # seeded rows: the very tokens one-at-a-time decoding samples (before the in-place
        # transforms below; the other rows' draws are discarded)
        plain = self.sampler.sample(logits.clone(), metadata) if metadata.seeds else None
        device = logits.device
        draft_at = torch.tensor([t for d in drafts for t in (*d, -1)], dtype=torch.long,
                                device=device)  # [N]: the draft each row verifies (-1: bonus)
        accepted = torch.zeros(len(draft_at), dtype=torch.bool, device=device)
        target = torch.empty(len(draft_at), dtype=torch.long, device=device)
        greedy = metadata.is_greedy
        if not metadata.all_random:
            best = argmax_rows(logits)
            accepted = torch.where(greedy, best == draft_at, accepted)
            target = torch.where(greedy, best, target)
        if not metadata.all_greedy:
            rows = (~greedy).nonzero().squeeze(1)
            if draft_probs is None:
                accept, token = _verify_random(logits[rows], rows, draft_at[rows], metadata)
            else:
                accept, token = _verify_random_with_probs(
                    logits[rows], rows, draft_at[rows], draft_probs[rows], metadata)
            accepted[rows], target[rows] = accept, token
        if plain is not None:
            seeded = torch.tensor(list(metadata.seeds), dtype=torch.long, device=device)
            accepted[seeded] = plain[seeded] == draft_at[seeded]
            target[seeded] = plain[seeded]
        emitted, kept_token = _emitted(drafts, accepted.tolist(), target.tolist())
        logprobs = self._logprobs(raw_logprobs, metadata, drafts, emitted, kept_token)
        return VerifiedTokens(emitted, logprobs)

    def _logprobs(self, raw: torch.Tensor | None, metadata: SamplingMetadata,
                  drafts: Sequence[Sequence[int]], emitted: list[list[int]],
                  kept_token: list[int]) -> list[LogprobsLists | None]:
        if raw is None:
            return [None] * len(drafts)
        assert metadata.max_num_logprobs is not None
        chosen = torch.tensor(kept_token, dtype=torch.long, device=raw.device)
        rows = gather_logprobs(raw, metadata.max_num_logprobs, chosen).to_lists(
            metadata.num_logprobs)
        out: list[LogprobsLists | None] = []
        offset = 0
        for draft, tokens in zip(drafts, emitted):
            mine = rows[offset : offset + len(tokens)]
            offset += len(draft) + 1
            if mine[0] is None:
                out.append(None)
                continue
            out.append(LogprobsLists(
                token_ids=[r.token_ids[0] for r in mine],  # type: ignore[union-attr]
                logprobs=[r.logprobs[0] for r in mine],  # type: ignore[union-attr]
                ranks=[r.ranks[0] for r in mine]))  # type: ignore[union-attr]
        return out


def _verify_random(logits: torch.Tensor, rows: torch.Tensor, draft_at: torch.Tensor,
                   metadata: SamplingMetadata) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rows [R, V]: (accepted [R] bool, the token emitted if not [R] long)."""

    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[rows]

    logits = logits / metadata.temperature[rows].unsqueeze(1)
    cands = nucleus_candidates(logits, pick(metadata.top_k), pick(metadata.top_p),
                               pick(metadata.min_p))
    is_draft = cands.token_ids == draft_at.unsqueeze(1)  # [R, K]; bonus rows match nothing
    weights = cands.weights
    p_draft = (weights * is_draft).sum(dim=1) / weights.sum(dim=1)
    accepted = torch.rand(len(rows), device=logits.device) < p_draft
    # A rejected draft is resampled from the target with the draft's token removed.
    recovered = exponential_race(weights.masked_fill(is_draft, 0.0), cands.num_kept, {})
    return accepted, cands.token_ids.gather(1, recovered.unsqueeze(1)).squeeze(1)


def _verify_random_with_probs(
    logits: torch.Tensor, rows: torch.Tensor, draft_at: torch.Tensor, q: torch.Tensor,
    metadata: SamplingMetadata,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rows [R, V] whose drafts were sampled from q [R, V]: (accepted [R] bool, the
    token emitted if not [R] long)."""

    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[rows]

    logits = logits / metadata.temperature[rows].unsqueeze(1)
    cands = nucleus_candidates(logits, pick(metadata.top_k), pick(metadata.top_p),
                               pick(metadata.min_p))
    # p over the whole vocabulary; scatter_add, as dropped candidates (weight 0) may repeat ids
    p = torch.zeros_like(logits).scatter_add_(
        1, cands.token_ids, cands.weights / cands.weights.sum(dim=1, keepdim=True))
    q = q.float() * (draft_at >= 0).unsqueeze(1)  # bonus rows: q = 0, so they sample p
    drafted = draft_at.clamp(min=0).unsqueeze(1)
    p_draft, q_draft = p.gather(1, drafted).squeeze(1), q.gather(1, drafted).squeeze(1)
    # u < p / q, written so that q(d) == 0 (never, for a true sample of q) cannot divide by 0
    accepted = torch.rand(len(rows), device=logits.device) * q_draft < p_draft
    residual = (p - q).clamp_(min=0.0)
    # p == q leaves nothing (and then nothing is ever rejected): sample p instead of 0 / 0
    empty = residual.sum(dim=1, keepdim=True) <= 0
    residual = torch.where(empty, p, residual)
    num_kept = torch.full((len(rows),), p.shape[1], dtype=torch.long, device=p.device)
    return accepted, exponential_race(residual, num_kept, {})


def _emitted(drafts: Sequence[Sequence[int]], accepted: list[bool], target: list[int]
             ) -> tuple[list[list[int]], list[int]]:
    """Per request: accepted drafts + the token at the first rejection (or the bonus); and per
    row, the token that row emits (for its logprobs; rows past a rejection are ignored)."""
    emitted: list[list[int]] = []
    kept_token = list(target)
    row = 0
    for draft in drafts:
        tokens: list[int] = []
        for j, token in enumerate(draft):
            if not accepted[row + j]:
                break
            tokens.append(token)
            kept_token[row + j] = token
        tokens.append(target[row + len(tokens)])
        emitted.append(tokens)
        row += len(draft) + 1
    return emitted, kept_token
