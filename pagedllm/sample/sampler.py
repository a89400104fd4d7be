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

Seeded rows draw q from a generator seeded by (request seed, position) (ops/seeded.py), and
every computation on a row is elementwise or a sequential scan of that row, so a seeded
request's tokens do not depend on what else is batched, where its row is, or whether its
tokens came from drafts; the other random rows share one batched draw.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.sample.metadata import SamplingMetadata
from pagedllm.sample.ops.argmax import argmax_rows
from pagedllm.sample.ops.logit_bias import apply_logit_bias, apply_min_tokens
from pagedllm.sample.ops.logprobs import compute_logprobs, compute_prompt_logprobs, gather_logprobs
from pagedllm.sample.ops.penalties import apply_penalties
from pagedllm.sample.ops.seeded import seeded_exponentials
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
            seeds = _seeds_of(rows, metadata.seeds)
            if bool(truncating[rows[0]]):
                sampled[rows] = _sample_truncated(logits[rows], rows, metadata, seeds)
            else:
                sampled[rows] = _sample_full(logits[rows], seeds)
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
    the same path whatever else is batched.
    """
    mask = truncating[rows]
    groups = [rows[~mask], rows[mask]]
    return [g for g in groups if g.numel() > 0]


def _seeds_of(rows: torch.Tensor, seeds: dict[int, int]) -> dict[int, int]:
    """Re-key the batch's draw seeds by position within the sub-batch `rows`."""
    if not seeds:
        return {}
    return {j: seeds[r] for j, r in enumerate(rows.tolist()) if r in seeds}


def _sample_full(logits: torch.Tensor, seeds: dict[int, int]) -> torch.Tensor:
    """Plain rows: race over the whole vocabulary, in token-id order. logits: [R, V]."""
    weights = (logits - logits.max(dim=-1, keepdim=True).values).exp_()  # [R, V]
    num_kept = torch.full_like(weights[:, 0], weights.shape[-1], dtype=torch.long)
    return exponential_race(weights, num_kept, seeds)


def _sample_truncated(
    logits: torch.Tensor,
    rows: torch.Tensor,
    metadata: SamplingMetadata,
    seeds: dict[int, int],
) -> torch.Tensor:
    """Rows with top-k/top-p/min-p: race over each row's surviving candidates."""

    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[rows]

    cands = nucleus_candidates(
        logits, pick(metadata.top_k), pick(metadata.top_p), pick(metadata.min_p)
    )
    positions = exponential_race(cands.weights, cands.num_kept, seeds, cands.token_ids,
                                 logits.shape[-1])  # [R]
    return cands.token_ids.gather(1, positions.unsqueeze(1)).squeeze(1)


def exponential_race(
    weights: torch.Tensor,
    num_kept: torch.Tensor,
    seeds: dict[int, int],
    token_ids: torch.Tensor | None = None,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """One categorical sample per row of weights [R, K] (unnormalized probabilities, 0 past
    num_kept [R]): the column argmax(weights / q) with q ~ Exp(1) i.i.d.

    (argmin of q_i / w_i is the first arrival among independent exponential clocks of rates
    w_i, which is column i with probability w_i / sum(w).) Rows in `seeds` take q from their
    seeded draw over the vocabulary (vocab_size values, indexed by token id: token_ids [R, K]
    names each column's token, None when column k is token k), so a token's noise does not
    depend on which candidates survived; the others share one draw from the default stream.
    """
    q = torch.empty_like(weights)  # [R, K]
    if len(seeds) < weights.shape[0]:
        q.exponential_()
    else:
        q.fill_(1.0)
    if seeds:
        kept = num_kept.tolist()
        generator = _seeded_generator(weights.device)
        for row, seed in seeds.items():
            noise = seeded_exponentials(generator, seed, vocab_size or weights.shape[1])
            k = kept[row]
            q[row, :k] = noise[:k] if token_ids is None else noise[token_ids[row, :k]]
            q[row, k:] = 1.0
    # NOTE: q == 0 is possible in float32; 0 / 0 would be a NaN that argmax picks.
    q.clamp_min_(torch.finfo(q.dtype).tiny)
    return argmax_rows(weights.div_(q))


_SEEDED_GENERATORS: dict[torch.device, torch.Generator] = {}


def _seeded_generator(device: torch.device) -> torch.Generator:
    """One generator per device, reseeded for every seeded draw (its state carries nothing
    from one draw to the next)."""
    generator = _SEEDED_GENERATORS.get(device)
    if generator is None:
        generator = _SEEDED_GENERATORS[device] = torch.Generator(device=device)
    return generator
