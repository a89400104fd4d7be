import torch

from pagedllm.sample import Sampler

from .sample_helpers import build, make_row

V = 64


def _logits(rows: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * scale


def test_greedy_is_argmax() -> None:
    logits = _logits(5)
    out = Sampler()(logits.clone(), build([make_row(temperature=0.0) for _ in range(5)], V))
    assert torch.equal(out.sampled_token_ids, logits.argmax(-1))
    assert out.logprobs is None


def test_mixed_batch_greedy_rows_stay_argmax() -> None:
    logits = _logits(4)
    rows = [make_row(temperature=0.0), make_row(temperature=1.0), make_row(temperature=0.0),
            make_row(temperature=1.0, top_p=0.5)]
    out = Sampler()(logits.clone(), build(rows, V)).sampled_token_ids
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()


def _run_seeded(configs: list[dict], steps: int, logits_of) -> list[list[int]]:
    """Sample `steps` tokens for a batch; row i's logits at step s = logits_of(key_i, s)."""
    sampler, tokens = Sampler(), [[] for _ in configs]
    for step in range(steps):
        # the rows hold what they generated: a seeded row's noise follows its position
        rows = [make_row([0], out, **c["params"]) for c, out in zip(configs, tokens)]
        logits = torch.stack([logits_of(c["key"], step) for c in configs])
        for i, t in enumerate(sampler(logits, build(rows, V)).sampled_token_ids.tolist()):
            tokens[i].append(t)
    return tokens


def _logits_of(key: int, step: int) -> torch.Tensor:
    return _logits(1, seed=1000 * key + step, scale=1.0)[0]


def test_seed_independent_of_batch_composition_and_position() -> None:
    seeded = {"key": 1, "params": dict(temperature=1.0, seed=42)}
    seeded_topp = {"key": 2, "params": dict(temperature=0.8, seed=7, top_p=0.9, top_k=20)}
    alone = _run_seeded([seeded], 20, _logits_of)[0]
    alone_topp = _run_seeded([seeded_topp], 20, _logits_of)[0]
    others = [
        {"key": 3, "params": dict(temperature=1.0)},
        {"key": 4, "params": dict(temperature=0.0)},
        {"key": 5, "params": dict(temperature=0.5, seed=3, min_p=0.1)},
        {"key": 6, "params": dict(temperature=1.0, top_k=5)},
    ]
    batch = _run_seeded([others[0], seeded, others[1], seeded_topp, *others[2:]], 20, _logits_of)
    assert batch[1] == alone and batch[3] == alone_topp
    reordered = _run_seeded([seeded_topp, *others[::-1], seeded], 20, _logits_of)
    assert reordered[0] == alone_topp and reordered[-1] == alone


def test_different_seeds_differ() -> None:
    a = _run_seeded([{"key": 1, "params": dict(temperature=1.0, seed=1)}], 30, _logits_of)[0]
    b = _run_seeded([{"key": 1, "params": dict(temperature=1.0, seed=2)}], 30, _logits_of)[0]
    assert a != b


def _draws(logits_row: torch.Tensor, n: int, **params) -> torch.Tensor:
    """n independent draws: n identical rows sampled in one call (unseeded batched draw)."""
    torch.manual_seed(0)
    logits = logits_row.unsqueeze(0).repeat(n, 1)
    metadata = build([make_row(**params) for _ in range(n)], logits.shape[1])
    return Sampler()(logits, metadata).sampled_token_ids


def test_temperature_distribution_matches_softmax() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, 0.2])
    draws = _draws(logits, 20_000, temperature=0.7)
    empirical = torch.bincount(draws, minlength=8).float() / draws.numel()
    assert (empirical - torch.softmax(logits / 0.7, -1)).abs().max() < 0.02


def test_top_k_uniform_logits_keep_exactly_k() -> None:
    draws = _draws(torch.zeros(V), 4000, temperature=1.0, top_k=5)
    assert len(set(draws.tolist())) == 5
    draws = _draws(torch.zeros(V), 4000, temperature=1.0, top_k=40, top_p=0.99)  # full sort
    assert set(draws.tolist()) == set(range(40))  # the sort is stable: lowest ids win ties


def test_top_p_samples_only_the_nucleus_with_renormalized_probs() -> None:
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.06, 0.04]))
    draws = _draws(logits, 20_000, temperature=1.0, top_p=0.8)
    empirical = torch.bincount(draws, minlength=5).float() / draws.numel()
    expected = torch.tensor([0.5, 0.25, 0.15, 0.0, 0.0]) / 0.9
    assert (empirical - expected).abs().max() < 0.02


def test_min_tokens_blocks_eos_and_stop_ids() -> None:
    logits = torch.full((3, V), -5.0)
    logits[:, 2] = 10.0  # EOS
    logits[:, 9] = 9.0  # a stop token id
    rows = [
        make_row(output=[5], temperature=0.0, min_tokens=3, stop_token_ids=[9]),
        make_row(output=[5, 5, 5], temperature=0.0, min_tokens=3, stop_token_ids=[9]),
        make_row(output=[], temperature=0.0, min_tokens=2, ignore_eos=True),
    ]
    out = Sampler()(logits, build(rows, V, eos=(2,))).sampled_token_ids.tolist()
    assert out[0] not in (2, 9) and out[1] == 2 and out[2] == 2


def test_logprobs_are_raw_with_ranks() -> None:
    logits = _logits(3)
    rows = [make_row(temperature=1.0, logprobs=3, repetition_penalty=1.5, output=[1, 2]),
            make_row(temperature=0.0, logprobs=0, logit_bias={7: 100.0}),
            make_row(temperature=0.0)]
    metadata = build(rows, V)
    out = Sampler()(logits.clone(), metadata)
    assert out.sampled_token_ids[1] == 7
    reference = torch.log_softmax(logits, -1)
    lp = out.logprobs
    assert lp.token_ids.shape == (3, 4) and torch.equal(lp.token_ids[:, 0], out.sampled_token_ids)
    chosen = reference.gather(1, out.sampled_token_ids[:, None]).squeeze(1)
    torch.testing.assert_close(lp.logprobs[:, 0], chosen)
    top = reference.topk(3, -1)
    torch.testing.assert_close(lp.logprobs[:, 1:], top.values)
    assert torch.equal(lp.token_ids[:, 1:], top.indices)
    for i in range(3):
        assert lp.ranks[i] == 1 + int((reference[i] > chosen[i]).sum())
    lists = lp.to_lists(metadata.num_logprobs)
    assert lists[2] is None and len(lists[1].token_ids[0]) == 1 and len(lists[0].token_ids[0]) == 4
    assert lists[1].ranks[0] == lp.ranks[1]
