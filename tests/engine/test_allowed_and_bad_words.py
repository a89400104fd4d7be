"""allowed_token_ids and bad_words end to end through LLM.generate on a tiny random Llama:
greedy rows against HF's logits, sampled rows and n > 1, bad words taken from what the model
really generates, and unconstrained rows of the same batch unchanged."""

from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, SamplingParams
from tests.hf_reference import hf_logits, load_hf_model

MAX_TOKENS = 24
PROMPTS = ["hello world", "the quick brown fox jumps over", "a"]


@pytest.fixture(scope="module")
def llm(tiny_llama_dir) -> LLM:
    return LLM(tiny_llama_dir, kv_cache_memory="64MiB")


def _greedy(**kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, **kwargs)


def _sampled(temperature: float = 1.0, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=temperature, max_tokens=MAX_TOKENS, ignore_eos=True,
                          **kwargs)


def _tokens(llm: LLM, prompts, params) -> list[list[list[int]]]:
    """[prompt][sample] -> generated token ids."""
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [[c.token_ids for c in o.outputs] for o in outputs]


def _contains(tokens: list[int], seq: list[int]) -> bool:
    return any(tokens[i : i + len(seq)] == seq for i in range(len(tokens) - len(seq) + 1))


def _first_ban(tokens: list[int], sequences: list[list[int]]) -> int | None:
    """The first position at which some bad word would have banned the generated token."""
    for j, token in enumerate(tokens):
        for seq in sequences:
            prefix = len(seq) - 1
            if token == seq[-1] and j >= prefix and tokens[j - prefix : j] == seq[:-1]:
                return j
    return None


def _bad_word_from(tokenizer, tokens: list[int]) -> tuple[str, list[int]]:
    """A multi-token window of `tokens` whose text tokenizes back to exactly that window (as the
    word, or the word after a space, which is what bad_words bans). Later windows first, so
    that the constrained output has a common prefix with the free one to compare."""
    for length in (2, 3):
        starts = list(range(len(tokens) - length + 1))
        for i in starts[4:] + starts[:4]:
            window = tokens[i : i + length]
            text = tokenizer.decode(window)
            word = text.lstrip()
            if not word or "\ufffd" in word:
                continue
            forms = [tokenizer.encode(w, add_special_tokens=False) for w in (word, " " + word)]
            if window in forms:
                return word, window
    raise AssertionError(f"no window of {tokens} round-trips through the tokenizer")


def _bad_words_ids(llm: LLM, params: SamplingParams) -> list[list[int]]:
    params = params.clone()
    llm.llm_engine.input_processor.tokenize_bad_words(params)
    assert params._bad_words_token_ids
    return params._bad_words_token_ids


def test_allowed_token_ids_greedy_is_argmax_over_the_set(llm, tiny_llama_dir):
    allowed = [10, 57, 123, 200, 301]
    prompt = PROMPTS[1]
    out = _tokens(llm, [prompt], _greedy(allowed_token_ids=allowed))[0][0]
    assert len(out) == MAX_TOKENS and set(out) <= set(allowed)
    ids = llm.get_tokenizer().encode(prompt)
    logits = hf_logits(load_hf_model(tiny_llama_dir), ids + out)[len(ids) - 1 : -1]
    index = torch.tensor(allowed)
    assert out == index[logits[:, index].argmax(-1)].tolist()
    assert len(set(out)) > 1  # the mask did not just leave one token


def test_allowed_token_ids_random_and_n_samples(llm):
    allowed = [10, 57, 123, 200, 301]
    params = [_sampled(n=3, seed=5, allowed_token_ids=allowed),
              _sampled(n=2, top_p=0.9, top_k=3, allowed_token_ids=allowed),
              _sampled(allowed_token_ids=[7])]
    outs = _tokens(llm, PROMPTS, params)
    assert [len(samples) for samples in outs] == [3, 2, 1]
    for samples, p in zip(outs, params):
        for tokens in samples:
            assert len(tokens) == MAX_TOKENS and set(tokens) <= set(p.allowed_token_ids)
    assert len({t for samples in outs[:2] for tokens in samples for t in tokens}) > 2


def test_bad_allowed_token_id_is_refused(llm, tiny_vocab):
    with pytest.raises(ValueError, match="allowed_token_ids"):
        llm.generate(PROMPTS, _greedy(allowed_token_ids=[1, tiny_vocab]), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()


def test_bad_words_greedy_diverges_where_the_word_would_end(llm):
    tokenizer = llm.get_tokenizer()
    prompts = [PROMPTS[1], PROMPTS[0]]
    free, other_free = (s[0] for s in _tokens(llm, prompts, _greedy()))
    word, window = _bad_word_from(tokenizer, free)
    params = _greedy(bad_words=[word])
    sequences = _bad_words_ids(llm, params)
    assert window in sequences and len(window) > 1
    j = _first_ban(free, sequences)
    assert j is not None and j > 0
    # Same batch: the constrained row, an unconstrained row and an allowed_token_ids row.
    allowed = _greedy(allowed_token_ids=[10, 57, 123])
    batch = [prompts[0], prompts[1], PROMPTS[2]]
    constrained, other, masked = (s[0] for s in _tokens(llm, batch, [params, _greedy(), allowed]))
    assert constrained[:j] == free[:j] and constrained[j] != free[j]
    assert not any(_contains(constrained, seq) for seq in sequences)
    assert other == other_free
    assert masked == _tokens(llm, [PROMPTS[2]], allowed)[0][0]
    assert constrained == _tokens(llm, [prompts[0]], params)[0][0]


def test_bad_words_hold_for_every_sample(llm):
    prompt = PROMPTS[1]
    # Seeded and at a low temperature: the word is taken from what a sample really produced.
    unconstrained = _tokens(llm, [prompt], _sampled(n=4, seed=11, temperature=0.3))[0]
    word, _ = _bad_word_from(llm.get_tokenizer(), unconstrained[0])
    params = _sampled(n=4, seed=11, temperature=0.3, bad_words=[word])
    sequences = _bad_words_ids(llm, params)
    assert any(_contains(unconstrained[0], seq) for seq in sequences)
    samples = _tokens(llm, [prompt], params)[0]
    assert len(samples) == 4
    assert not any(_contains(t, seq) for t in samples for seq in sequences)
