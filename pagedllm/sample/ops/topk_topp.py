"""Top-k, min-p and top-p (nucleus) truncation, vectorized over the batch.

Each row's candidates are its tokens sorted by logit, most likely first (a partial torch.topk
when every row's nucleus is known to fit in a few columns, else one full stable sort):

    position:   0        1        2      ...   K-1
    weight:     1    e^(l1-l0)  e^(l2-l0) ...        (unnormalized probabilities)
    top-k   drops positions >= k (exactly k survive, even with ties);
    min-p   drops weights < min_p (weight = prob / max prob);
    top-p   drops a position once the kept mass strictly before it is >= top_p of the total
            kept by top-k/min-p: the smallest prefix reaching top_p survives.

All three drop a suffix, so the survivors are a prefix [0, num_kept). No softmax and no
parallel reduction is involved (only elementwise ops and sequential cumsums), so a row's
result is bitwise independent of the batch around it and of the width K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUCLEUS_WIDTH = 1024
"""Columns tried first for rows with top-p/min-p but no top-k; rows whose nucleus does not fit
are redone with a full sort."""


@dataclass
class Candidates:
    token_ids: torch.Tensor  # [R, K] long, most likely first
    weights: torch.Tensor  # [R, K] float32: unnormalized probs, 0 past num_kept
    num_kept: torch.Tensor  # [R] long: survivors are positions [0, num_kept)


def nucleus_candidates(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    min_p: torch.Tensor | None,
) -> Candidates:
    """logits: [R, V] (temperature already applied). top_k: [R] long in [1, V] (V = off);
    top_p: [R] in (0, 1] (1 = off); min_p: [R] in [0, 1] (0 = off); None = off for all rows."""
    vocab = logits.shape[-1]
    bounds = torch.full((logits.shape[0],), min(NUCLEUS_WIDTH, vocab), device=logits.device)
    if top_k is not None:
        bounds = torch.where(top_k < vocab, top_k, bounds)
    width = int(bounds.max())
    cands = _truncate(logits, width if width * 8 <= vocab else vocab, top_k, top_p, min_p)
    overflow = (cands.num_kept == cands.token_ids.shape[1]) & (bounds == NUCLEUS_WIDTH)
    if cands.token_ids.shape[1] == vocab or not bool(overflow.any()):
        return cands
    return _redo_full(logits, cands, overflow.nonzero().squeeze(1), top_k, top_p, min_p)


def _truncate(
    logits: torch.Tensor,
    width: int,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    min_p: torch.Tensor | None,
) -> Candidates:
    if width == logits.shape[-1]:
        values, token_ids = logits.sort(dim=-1, descending=True, stable=True)  # [R, V]
    else:
        values, token_ids = logits.topk(width, dim=-1)  # [R, K], sorted descending
    weights = (values - values[:, :1]).exp_()  # [R, K], column 0 == 1
    positions = torch.arange(width, device=logits.device).unsqueeze(0)
    drop = torch.zeros_like(weights, dtype=torch.bool)
    if top_k is not None:
        drop |= positions >= top_k.unsqueeze(1)
    if min_p is not None:
        drop |= weights < min_p.unsqueeze(1)
    if top_p is not None:
        weights.masked_fill_(drop, 0.0)
        cum = weights.cumsum(dim=-1)  # sequential scan: trailing zeros change nothing
        mass_before = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], dim=1)
        total = _kept_total(logits, cum, top_k, min_p)  # [R, 1]
        # NOTE: rows with top_p == 1 are left alone: rounding could reach the total early.
        drop |= (mass_before >= top_p.unsqueeze(1) * total) & (top_p < 1.0).unsqueeze(1)
    drop[:, 0] = False
    return Candidates(token_ids, weights.masked_fill_(drop, 0.0), (~drop).sum(dim=-1))


def _kept_total(
    logits: torch.Tensor, cum: torch.Tensor, top_k: torch.Tensor | None, min_p: torch.Tensor | None
) -> torch.Tensor:
    """[R, 1] unnormalized mass top-p renormalizes over: what top-k and min-p kept.

    Rows with top-k have all of it among the candidates; the others need the whole row (a
    sequential cumsum, not .sum(), whose parallel split would depend on the batch size).
    """
    vocab = logits.shape[-1]
    if top_k is not None and bool((top_k < vocab).all()):
        return cum[:, -1:]
    weights = (logits - logits.max(dim=-1, keepdim=True).values).exp_()  # [R, V]
    if min_p is not None:
        weights.masked_fill_(weights < min_p.unsqueeze(1), 0.0)
    full_total = weights.cumsum(dim=-1)[:, -1:]
    if top_k is None:
        return full_total
    return torch.where((top_k < vocab).unsqueeze(1), cum[:, -1:], full_total)


def _redo_full(
    logits: torch.Tensor,
    cands: Candidates,
    rows: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    min_p: torch.Tensor | None,
) -> Candidates:
    """Rows whose nucleus filled the partial candidates: redo them with a full sort."""

    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[rows]

    full = _truncate(logits[rows], logits.shape[-1], pick(top_k), pick(top_p), pick(min_p))
    num_rows, vocab = logits.shape
    width = cands.token_ids.shape[1]
    # NOTE: columns past a partial row's width hold the scratch id `vocab` with weight 0;
    # they are never sampled (column 0 always has weight 1).
    token_ids = torch.full((num_rows, vocab), vocab, dtype=torch.long, device=logits.device)
    weights = torch.zeros(num_rows, vocab, dtype=cands.weights.dtype, device=logits.device)
    token_ids[:, :width], weights[:, :width] = cands.token_ids, cands.weights
    token_ids[rows], weights[rows] = full.token_ids, full.weights
    num_kept = cands.num_kept.clone()
    num_kept[rows] = full.num_kept
    return Candidates(token_ids, weights, num_kept)


def apply_top_k_top_p_min_p(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    min_p: torch.Tensor | None,
) -> torch.Tensor:
    """The same truncation as a mask: dropped tokens of logits [R, V] set to -inf, in place."""
    if top_k is None and top_p is None and min_p is None:
        return logits
    cands = nucleus_candidates(logits, top_k, top_p, min_p)
    num_rows, vocab = logits.shape
    keep = torch.zeros(num_rows, vocab + 1, dtype=torch.bool, device=logits.device)
    positions = torch.arange(cands.token_ids.shape[1], device=logits.device)
    keep.scatter_(-1, cands.token_ids, positions.unsqueeze(0) < cands.num_kept.unsqueeze(1))
    return logits.masked_fill_(~keep[:, :vocab], float("-inf"))
