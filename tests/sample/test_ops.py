import pytest
import torch

from pagedllm.sample import compute_prompt_logprobs
from pagedllm.sample.ops.logit_bias import apply_logit_bias
from pagedllm.sample.ops.penalties import apply_penalties, token_counts
from pagedllm.sample.ops.topk_topp import apply_top_k_top_p_min_p, nucleus_candidates

from .sample_helpers import build, make_row

V = 50


def _reference_penalties(logits: torch.Tensor, rows) -> torch.Tensor:
    """Straightforward per-row, per-token loops (HF repetition, OpenAI frequency/presence)."""
    out = logits.clone()
    for i, row in enumerate(rows):
        p = row.params
        for token in set(row.prompt_token_ids) | set(row.output_token_ids):
            x = out[i, token]
            out[i, token] = x / p.repetition_penalty if x > 0 else x * p.repetition_penalty
        for token in set(row.output_token_ids):
            count = row.output_token_ids.count(token)
            out[i, token] -= p.frequency_penalty * count + p.presence_penalty
    return out


@pytest.mark.parametrize(
    "params",
    [
        dict(repetition_penalty=1.3),
        dict(repetition_penalty=0.7),
        dict(frequency_penalty=0.5),
        dict(presence_penalty=-1.2),
        dict(repetition_penalty=1.2, frequency_penalty=0.3, presence_penalty=0.4),
    ],
)
def test_penalties_match_reference(params: dict) -> None:
    gen = torch.Generator().manual_seed(0)
    rows = [
        make_row([1, 2, 3, 3], [4, 4, 4, 2, 9], **params),
        make_row([], [], **params),
        make_row([7, 8], [8, 8, 30, 49, 0], **params),
        make_row([5], [6, 6]),  # no penalty in this row
    ]
    logits = torch.randn(4, V, generator=gen) * 3
    metadata = build(rows, V)
    got = apply_penalties(logits.clone(), metadata.penalties)
    torch.testing.assert_close(got, _reference_penalties(logits, rows))


def test_no_penalties_means_none() -> None:
    assert build([make_row([1], [2]), make_row()], V).no_penalties


def test_token_counts_scatter() -> None:
    counts = token_counts([[1, 1, 3], [], [49, 0, 49]], V, torch.device("cpu"))
    assert counts.shape == (3, V)
    assert counts[0, 1] == 2 and counts[0, 3] == 1 and counts[1].sum() == 0
    assert counts[2, 49] == 2 and counts[2, 0] == 1 and counts.sum() == 6


def test_logit_bias_adds_per_row() -> None:
    rows = [make_row(logit_bias={3: 5.0, 7: -100}), make_row(), make_row(logit_bias={3: 1.5})]
    logits = torch.zeros(3, V)
    got = apply_logit_bias(logits, build(rows, V).logit_bias)
    expected = torch.zeros(3, V)
    expected[0, 3], expected[0, 7], expected[2, 3] = 5.0, -100.0, 1.5
    assert torch.equal(got, expected)


def test_logit_bias_out_of_vocab_raises() -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build([make_row(logit_bias={V: 1.0})], V)


def _kept(logits: torch.Tensor, **kw) -> list[set[int]]:
    masked = apply_top_k_top_p_min_p(
        logits.clone(), kw.get("top_k"), kw.get("top_p"), kw.get("min_p")
    )
    return [set(torch.isfinite(row).nonzero().squeeze(1).tolist()) for row in masked]


def test_top_k_mask() -> None:
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(1))
    kept = _kept(logits, top_k=torch.tensor([1, 5, V]))
    for row, k, s in zip(logits, [1, 5, V], kept):
        assert s == set(row.topk(k).indices.tolist())


def _reference_nucleus(probs: torch.Tensor, p: float) -> set[int]:
    """Smallest set of most likely tokens whose mass reaches p."""
    order, total, kept = probs.argsort(descending=True).tolist(), 0.0, set()
    for token in order:
        if total >= p:
            break
        kept.add(token)
        total += float(probs[token])
    return kept


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.9, 0.999])
def test_top_p_keeps_minimal_nucleus(top_p: float) -> None:
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(2)) * 2
    kept = _kept(logits, top_p=torch.full((4,), top_p))
    for row, s in zip(logits, kept):
        assert s == _reference_nucleus(row.double().softmax(-1), top_p)


def test_top_p_exact_boundary() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))
    assert _kept(logits, top_p=torch.tensor([0.75])) == [{0, 1}]  # 0.5 + 0.25 reaches 0.75
    assert _kept(logits, top_p=torch.tensor([0.76])) == [{0, 1, 2}]
    assert _kept(logits, top_p=torch.tensor([1.0])) == [{0, 1, 2, 3}]


def test_min_p_mask() -> None:
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(3)) * 2
    min_p = torch.tensor([0.0, 0.1, 0.5])
    for row, mp, s in zip(logits, min_p, _kept(logits, min_p=min_p)):
        probs = row.softmax(-1)
        assert s == set((probs >= mp * probs.max()).nonzero().squeeze(1).tolist())


def test_top_k_then_top_p_renormalizes() -> None:
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    # top-k 2 -> {0.4, 0.3} renormalized to {0.571, 0.429}: top-p 0.5 keeps only token 0
    assert _kept(logits, top_k=torch.tensor([2]), top_p=torch.tensor([0.5])) == [{0}]


def test_wide_nucleus_falls_back_to_full_sort() -> None:
    vocab = 20_000  # flat logits: the 0.9 nucleus is ~18k tokens, far past the first columns
    logits = torch.randn(2, vocab, generator=torch.Generator().manual_seed(4)) * 0.01
    logits[1] *= 1000  # a peaked row whose nucleus fits
    top_p = torch.tensor([0.9, 0.9])
    cands = nucleus_candidates(logits, None, top_p, None)
    for i in range(2):
        expected = _reference_nucleus(logits[i].double().softmax(-1), 0.9)
        kept = set(cands.token_ids[i, : int(cands.num_kept[i])].tolist())
        assert kept == expected


def test_prompt_logprobs() -> None:
    logits = torch.randn(6, V, generator=torch.Generator().manual_seed(5))
    next_ids = torch.tensor([3, 1, 4, 1, 5, 9])
    out = compute_prompt_logprobs(logits, next_ids, 2)
    reference = logits.log_softmax(-1)
    assert torch.equal(out.token_ids[:, 0], next_ids)
    torch.testing.assert_close(out.logprobs[:, 0], reference[torch.arange(6), next_ids])
    torch.testing.assert_close(out.logprobs[:, 1:], reference.topk(2).values)
    ranks = [1 + int((reference[i] > reference[i, t]).sum()) for i, t in enumerate(next_ids)]
    assert out.ranks.tolist() == ranks
    lists = out.to_positions_lists(start_position=3)
    assert lists.start_position == 3 and len(lists.token_ids) == 6 and len(lists.token_ids[0]) == 3
