"""Sampler: logits [B, V] + SamplingMetadata -> one token per row (+ logprobs).

The transforms run in this fixed order:

    0. logprobs of the RAW logits, if any row asks (see ops/logprobs.py for why raw)
    1. allowed_token_ids               (every other token -> -inf, on the rows that have it)
    2. bad_words                       (a banned word's last token -> -inf after its prefix)
    3. logit bias                      (additive, OpenAI logit_bias)
    4. min_tokens                      (EOS / stop_token_ids -> -inf until min_tokens reached)
    5. penalties                       (repetition: prompt+output; frequency/presence: output)
    6. greedy rows: argmax             (temperature == 0; sees 1-5, not 7-8)
    7. temperature                     (random rows: logits / T)
    8. top-k, min-p, top-p             (sorted candidates, ops/topk_topp.py)
    9. random rows: sample from the renormalized survivors by the exponential race
       argmax(p / q), q ~ Exp(1) (p unnormalized: softmax's denominator cannot change it)

Seeded rows draw q from their own generator, and every computation on a row is elementwise
or a sequential scan of that row, so a seeded request's tokens do not depend on what else is
batched or where its row is; the other random rows share one batched draw.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.sample.metadata import SamplingMetadata
from pagedllm.sample.ops.argmax import argmax_rows
from pagedllm.sample.ops.logit_bias import apply_logit_bias, apply_min_tokens
from pagedllm.sample.ops.logprobs import compute_logprobs, compute_prompt_logprobs, gather_logprobs
from pagedllm.sample.ops.penalties import apply_penalties
from pagedllm.sample.ops.token_masks import apply_allowed_token_ids, apply_banned_tokens
from pagedllm.sample.ops.topk_topp import nucleus_candidates
from pagedllm.sample.outputs import LogprobsTensors, SamplerOutput

__all__ = ["Sampler", "SamplerOutput", "LogprobsTensors", "compute_prompt_logprobs"]


class Sampler(nn.Module):
    """Stateless; all per-request state comes in through SamplingMetadata."""

    @torch.inference_mode()
    def forward(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        """logits: [B, V]. NOTE: float32 logits are modified in place (other dtypes are copied)."""
        logits = logits.float()
        raw_logprobs = self.process(logits, metadata)
        sampled = self.sample(logits, metadata)  # [B]
        logprobs = None
        if raw_logprobs is not None:
            assert metadata.max_num_logprobs is not None
            logprobs = gather_logprobs(raw_logprobs, metadata.max_num_logprobs, sampled)
        return SamplerOutput(sampled_token_ids=sampled, logprobs=logprobs)

    def process(self, logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor | None:
        """Steps 0-5, in place on float32 logits [B, V]; the raw logprobs [B, V] if any row
        asks for logprobs (else None)."""
        raw_logprobs = None
        if metadata.max_num_logprobs is not None:
            raw_logprobs = compute_logprobs(logits)  # [B, V]
        apply_allowed_token_ids(logits, metadata.allowed_token_ids)
        apply_banned_tokens(logits, metadata.bad_words_banned)
        apply_logit_bias(logits, metadata.logit_bias)
        apply_min_tokens(logits, metadata.min_tokens_blocked)
        apply_penalties(logits, metadata.penalties)
        return raw_logprobs

    def sample(self, logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        """Steps 6-9 on processed logits [B, V] -> [B] long."""
        greedy = None if metadata.all_random else argmax_rows(logits)
        if metadata.all_greedy:
            assert greedy is not None
            return greedy
        sampled = greedy if greedy is not None else logits.new_empty(len(logits), dtype=torch.long)
        random_rows = (~metadata.is_greedy).nonzero().squeeze(1)
        logits.div_(metadata.temperature.unsqueeze(1))
        truncating = _truncating_rows(metadata, logits.shape[-1])  # [B] bool
        for rows in _split(random_rows, truncating):
            generators = _generators_of(rows, metadata.generators)
            if bool(truncating[rows[0]]):
                sampled[rows] = _sample_truncated(logits[rows], rows, metadata, generators)
            else:
                sampled[rows] = _sample_full(logits[rows], generators)
        return sampled


def _truncating_rows(metadata: SamplingMetadata, vocab_size: int) -> torch.Tensor:
    """[B] bool: rows with an active top-k, top-p or min-p."""
    truncating = torch.zeros_like(metadata.is_greedy)
    if metadata.top_k is not None:
        truncating |= metadata.top_k < vocab_size
    if metadata.top_p is not None:
        truncating |= metadata.top_p < 1.0
    if metadata.min_p is not None:
        truncating |= metadata.min_p > 0.0
    return truncating


def _split(rows: torch.Tensor, truncating: torch.Tensor) -> list[torch.Tensor]:
    """rows [R] -> the non-empty groups [plain rows, truncating rows].

    NOTE: the group a row lands in depends only on its own parameters, so a seeded row takes
    the same path (and consumes its generator the same way) whatever else is batched.
    """
    mask = truncating[rows]
    groups = [rows[~mask], rows[mask]]
    return [g for g in groups if g.numel() > 0]


def _generators_of(
    rows: torch.Tensor, generators: dict[int, torch.Generator]
) -> dict[int, torch.Generator]:
    """Re-key the batch's generators by position within the sub-batch `rows`."""
    return {j: generators[r] for j, r in enumerate(rows.tolist()) if r in generators}


def _sample_full(logits: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """Plain rows: race over the whole vocabulary, in token-id order. logits: [R, V]."""
    weights = (logits - logits.max(dim=-1, keepdim=True).values).exp_()  # [R, V]
    num_kept = torch.full_like(weights[:, 0], weights.shape[-1], dtype=torch.long)
    return exponential_race(weights, num_kept, generators)


def _sample_truncated(
    logits: torch.Tensor,
    rows: torch.Tensor,
    metadata: SamplingMetadata,
    generators: dict[int, torch.Generator],
) -> torch.Tensor:
    """Rows with top-k/top-p/min-p: race over each row's surviving candidates."""

    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[rows]

    cands = nucleus_candidates(
        logits, pick(metadata.top_k), pick(metadata.top_p), pick(metadata.min_p)
    )
    positions = exponential_race(cands.weights, cands.num_kept, generators)  # [R]
    return cands.token_ids.gather(1, positions.unsqueeze(1)).squeeze(1)


def exponential_race(
    weights: torch.Tensor, num_kept: torch.Tensor, generators: dict[int, torch.Generator]
) -> torch.Tensor:
    """One categorical sample per row of weights [R, K] (unnormalized probabilities, 0 past
    num_kept [R]): the column argmax(weights / q) with q ~ Exp(1) i.i.d.

    (argmin of q_i / w_i is the first arrival among independent exponential clocks of rates
    w_i, which is column i with probability w_i / sum(w).) Rows in `generators` draw exactly
    num_kept values from their own generator; the others share one draw from the default one.
    """
    q = torch.empty_like(weights)  # [R, K]
    if len(generators) < weights.shape[0]:
        q.exponential_()
    else:
        q.fill_(1.0)
    kept = num_kept.tolist() if generators else []
    for row, generator in generators.items():
        q[row, : kept[row]].exponential_(generator=generator)
        q[row, kept[row] :] = 1.0
    # NOTE: q == 0 is possible in float32; 0 / 0 would be a NaN that argmax picks.
    q.clamp_min_(torch.finfo(q.dtype).tiny)
    return argmax_rows(weights.div_(q))
