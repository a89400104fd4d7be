"""SamplingMetadata: the per-row sampling parameters of one step as batched tensors.

Row i belongs to the i-th request sampling this step (row i of the logits); the sampler never
looks at SamplingParams. Transforms nobody in the batch uses are None, so the sampler skips them.
The model runner gathers it from its persistent rows (worker/sampling_state.py);
SamplingMetadata.build makes the same from SamplingRows from scratch (the sampler's tests, and
the reference the runner's incremental state is checked against).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pagedllm.sample.ops.logit_bias import SparseRowTokens
from pagedllm.sample.ops.penalties import PenaltyTensors, token_counts
from pagedllm.sample.ops.seeded import draw_seed
from pagedllm.sample.ops.token_masks import bad_words_banned
from pagedllm.sampling_params import SamplingParams


@dataclass
class SamplingRow:
    """One request's row of the step's logits."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    """Tokens generated so far (not including the one being sampled now)."""


@dataclass
class SamplingMetadata:
    temperature: torch.Tensor  # [B] float32; 1.0 on greedy rows (never divides by 0)
    is_greedy: torch.Tensor  # [B] bool
    all_greedy: bool
    all_random: bool
    top_k: torch.Tensor | None  # [B] long in [1, V]; V where off; None if no row uses it
    top_p: torch.Tensor | None  # [B] float32; 1.0 where off
    min_p: torch.Tensor | None  # [B] float32; 0.0 where off
    seeds: dict[int, int]
    """Row -> the seed of its draw, for random (non-greedy) rows of seeded requests: a function
    of the request's seed and the position of the token being sampled (ops/seeded.py)."""
    penalties: PenaltyTensors | None
    allowed_token_ids: SparseRowTokens | None
    """(row, token) pairs that rows with allowed_token_ids may sample (their other tokens are
    masked); rows absent from it are unconstrained. Row-major, tokens sorted and unique."""
    bad_words_banned: SparseRowTokens | None
    """(row, token) pairs masked to -inf: the last token of each bad word whose other tokens
    were just generated (a one-token bad word: always)."""
    logit_bias: SparseRowTokens | None
    min_tokens_blocked: SparseRowTokens | None
    """(row, token) pairs masked to -inf: EOS and stop_token_ids of rows below min_tokens."""
    num_logprobs: list[int | None]
    """Per row: how many top logprobs it wants (None: no logprobs)."""
    max_num_logprobs: int | None
    """Largest of num_logprobs, None if no row wants logprobs."""

    @property
    def no_penalties(self) -> bool:
        return self.penalties is None

    @classmethod
    def build(
        cls,
        rows: Sequence[SamplingRow],
        vocab_size: int,
        device: torch.device | str,
        eos_token_ids: tuple[int, ...] = (),
    ) -> SamplingMetadata:
        params = [row.params for row in rows]
        greedy = [p.is_greedy for p in params]
        requested = [p.logprobs for p in params if p.logprobs is not None]
        return cls(
            temperature=torch.tensor(
                [1.0 if g else p.temperature for p, g in zip(params, greedy)], device=device
            ),
            is_greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
            all_greedy=all(greedy),
            all_random=bool(rows) and not any(greedy),
            top_k=_top_k(params, vocab_size, device),
            top_p=_floats([p.top_p for p in params], device, unless_all=1.0),
            min_p=_floats([p.min_p for p in params], device, unless_all=0.0),
            seeds={
                i: draw_seed(row.params.seed, len(row.prompt_token_ids) + len(row.output_token_ids))
                for i, (row, g) in enumerate(zip(rows, greedy))
                if row.params.seed is not None and not g
            },
            penalties=_penalties(rows, vocab_size, device),
            allowed_token_ids=_pairs(
                [(i, allowed_ids(p)) for i, p in enumerate(params) if p.allowed_token_ids],
                device,
            ),
            bad_words_banned=_pairs(
                [
                    (i, bad_words_banned(row.params._bad_words_token_ids, row.output_token_ids))
                    for i, row in enumerate(rows)
                    if row.params._bad_words_token_ids
                ],
                device,
            ),
            logit_bias=_logit_bias(params, vocab_size, device),
            min_tokens_blocked=_min_tokens_blocked(rows, eos_token_ids, vocab_size, device),
            num_logprobs=[p.logprobs for p in params],
            max_num_logprobs=max(requested) if requested else None,
        )


def _floats(
    values: list[float], device: torch.device | str, unless_all: float
) -> torch.Tensor | None:
    """[B] float32, or None when every value equals unless_all (the transform is off)."""
    if all(v == unless_all for v in values):
        return None
    return torch.tensor(values, dtype=torch.float32, device=device)


def _top_k(
    params: list[SamplingParams], vocab_size: int, device: torch.device | str
) -> torch.Tensor | None:
    ks = [clamped_top_k(p, vocab_size) for p in params]
    if all(k == vocab_size for k in ks):
        return None
    return torch.tensor(ks, dtype=torch.long, device=device)


def uses_penalty(params: SamplingParams) -> bool:
    """The request has a presence, frequency or repetition penalty."""
    return (
        params.presence_penalty != 0.0
        or params.frequency_penalty != 0.0
        or params.repetition_penalty != 1.0
    )


def clamped_top_k(params: SamplingParams, vocab_size: int) -> int:
    """top_k in [1, V]; V where it is off."""
    return vocab_size if params.top_k is None else min(params.top_k, vocab_size)


def check_token_ids(token_ids: Sequence[int], vocab_size: int, field: str = "logit_bias") -> None:
    bad = sorted({t for t in token_ids if not 0 <= t < vocab_size})
    if bad:
        raise ValueError(f"{field} token ids {bad} are outside the vocabulary [0, {vocab_size})")


def allowed_ids(params: SamplingParams) -> list[int]:
    """The request's allowed_token_ids, sorted and unique."""
    return sorted(set(params.allowed_token_ids or ()))


def min_tokens_stop_ids(
    params: SamplingParams, eos_token_ids: tuple[int, ...], vocab_size: int
) -> list[int]:
    """The ids blocked while a request is below min_tokens (EOS unless ignore_eos, and
    stop_token_ids), sorted."""
    stops = set(params.stop_token_ids or ())
    if not params.ignore_eos:
        stops.update(eos_token_ids)
    # An id outside the logits can never be sampled: nothing to block.
    return [t for t in sorted(stops) if 0 <= t < vocab_size]


def _penalties(
    rows: Sequence[SamplingRow], vocab_size: int, device: torch.device | str
) -> PenaltyTensors | None:
    params = [row.params for row in rows]
    active = [uses_penalty(p) for p in params]
    if not any(active):
        return None
    # NOTE: only rows with a penalty contribute tokens; the others' zero counts are unused.
    prompts = [row.prompt_token_ids if a else [] for row, a in zip(rows, active)]
    outputs = [row.output_token_ids if a else [] for row, a in zip(rows, active)]
    return PenaltyTensors(
        presence=torch.tensor([p.presence_penalty for p in params], device=device),
        frequency=torch.tensor([p.frequency_penalty for p in params], device=device),
        repetition=torch.tensor([p.repetition_penalty for p in params], device=device),
        prompt_mask=token_counts(prompts, vocab_size, device) > 0,
        output_counts=token_counts(outputs, vocab_size, device),
    )


def _logit_bias(
    params: list[SamplingParams], vocab_size: int, device: torch.device | str
) -> SparseRowTokens | None:
    entries = [
        (i, token, bias)
        for i, p in enumerate(params)
        for token, bias in (p.logit_bias or {}).items()
    ]
    if not entries:
        return None
    check_token_ids([token for _, token, _ in entries], vocab_size)
    rows, tokens, values = zip(*entries)
    return SparseRowTokens(
        rows=torch.tensor(rows, dtype=torch.long, device=device),
        tokens=torch.tensor(tokens, dtype=torch.long, device=device),
        values=torch.tensor(values, dtype=torch.float32, device=device),
    )


def _min_tokens_blocked(
    rows: Sequence[SamplingRow],
    eos_token_ids: tuple[int, ...],
    vocab_size: int,
    device: torch.device | str,
) -> SparseRowTokens | None:
    pairs: list[tuple[int, int]] = []
    for i, row in enumerate(rows):
        p = row.params
        if len(row.output_token_ids) >= p.min_tokens:
            continue
        pairs.extend((i, t) for t in min_tokens_stop_ids(p, eos_token_ids, vocab_size))
    if not pairs:
        return None
    rows_, tokens = zip(*pairs)
    return SparseRowTokens(
        rows=torch.tensor(rows_, dtype=torch.long, device=device),
        tokens=torch.tensor(tokens, dtype=torch.long, device=device),
    )


def _pairs(
    entries: list[tuple[int, list[int]]], device: torch.device | str
) -> SparseRowTokens | None:
    """(row, its tokens) entries -> the (row, token) pairs, in entry order; None if empty."""
    rows = [i for i, tokens in entries for _ in tokens]
    if not rows:
        return None
    return SparseRowTokens(
        rows=torch.tensor(rows, dtype=torch.long, device=device),
        tokens=torch.tensor([t for _, tokens in entries for t in tokens], dtype=torch.long,
                            device=device),
    )
