"""LLM.beam_search against transformers' beam search, token for token, and the state machine's
rules on hand-made logprobs.

The configuration under which the two agree exactly (documented in tests/hf_reference.py's
hf_beam_search): `generate(num_beams=W, num_return_sequences=W, do_sample=False,
early_stopping="never", length_penalty=lp)`. "never" is transformers' exhaustive setting (its
stopping bound is exact); our search uses the same candidate rules and length definition as
transformers (see pagedllm/beam_search.py), which is where it departs from vLLM.

A random tiny model almost never ends with its real EOS, so the models here get a token they
actually produce as their EOS: beams finish at different lengths, and the length penalty and the
"only the W best candidates may finish" rule decide the answer.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil

import pytest

from pagedllm import LLM, BeamSearchParams, SamplingParams
from pagedllm.beam_search import BeamSearch
from pagedllm.outputs import Logprob
from tests.hf_reference import hf_beam_search, hf_greedy, load_hf_model

PROMPTS = ["The quick brown fox jumps over the lazy dog", "def fibonacci(n):", "Once upon a time"]
MAX_TOKENS = 10


def _with_eos(source: str, target: str, eos_id: int) -> str:
    if not os.path.isdir(target):
        shutil.copytree(source, target)
        for name in ("config.json", "generation_config.json"):
            path = os.path.join(target, name)
            with open(path) as f:
                data = json.load(f)
            data["eos_token_id"] = eos_id
            with open(path, "w") as f:
                json.dump(data, f)
    return target


@pytest.fixture(scope="module", params=["LlamaConfig", "Qwen2Config"])
def eos_model(request, tiny_model_factory, tmp_path_factory):
    """(model dir, EOS id): a tiny random model whose EOS is the 3rd token it says greedily."""
    base = tiny_model_factory(request.param)
    hf = load_hf_model(base)
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(base).encode(PROMPTS[0])
    eos_id = hf_greedy(hf, ids, 3)[2]
    target = str(tmp_path_factory.mktemp("eos") / request.param)
    return _with_eos(base, target, eos_id), eos_id


@pytest.fixture(scope="module")
def eos_llm(eos_model):
    llm = LLM(eos_model[0], kv_cache_memory="16MiB", max_num_seqs=64)
    assert llm.llm_engine.config.model.eos_token_ids == (eos_model[1],)
    return llm


def test_beam_search_matches_transformers(eos_model, eos_llm):
    model_dir, eos_id = eos_model
    hf = load_hf_model(model_dir)
    tokenizer = eos_llm.get_tokenizer()
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    lengths_seen, finished_by_eos = set(), 0
    for beam_width, length_penalty in itertools.product((2, 3, 4), (1.0, 0.0, -0.5, 2.0)):
        params = BeamSearchParams(beam_width=beam_width, max_tokens=MAX_TOKENS,
                                  length_penalty=length_penalty, include_stop_str_in_output=True)
        outputs = eos_llm.beam_search(prompts, params)
        for ids, output in zip(prompts, outputs):
            expected = hf_beam_search(hf, ids, beam_width, MAX_TOKENS, length_penalty, [eos_id])
            assert [s.token_ids for s in output.sequences] == expected, params
            lengths_seen |= {len(s.token_ids) for s in output.sequences}
            finished_by_eos += sum(s.finish_reason == "stop" for s in output.sequences)
    # The comparison exercised finishing by EOS at several lengths, not only max_tokens.
    assert finished_by_eos > 0 and len(lengths_seen) > 1


def test_beam_search_outputs_and_ignore_eos(eos_model, eos_llm):
    model_dir, eos_id = eos_model
    tokenizer = eos_llm.get_tokenizer()
    ids = tokenizer.encode(PROMPTS[0])
    kept = eos_llm.beam_search([ids], BeamSearchParams(3, 8, include_stop_str_in_output=True))[0]
    dropped = eos_llm.beam_search([ids], BeamSearchParams(3, 8))[0]
    for a, b in zip(kept.sequences, dropped.sequences):
        assert a.cum_logprob == b.cum_logprob and a.finish_reason == b.finish_reason
        if a.finish_reason == "stop":
            assert a.token_ids == b.token_ids + [eos_id] and a.stop_reason == eos_id
        assert b.tokens == ids + b.token_ids and b.text == tokenizer.decode(b.tokens)
        # cumulative logprob = the sum of the chosen tokens' logprobs
        chosen = sum(entry[t].logprob for entry, t in zip(a.logprobs, a.token_ids))
        assert chosen == pytest.approx(a.cumulative_logprob, abs=1e-5)
    # ignore_eos: transformers with no EOS at all
    hf = load_hf_model(model_dir)
    out = eos_llm.beam_search([ids], BeamSearchParams(3, 6, ignore_eos=True))[0]
    assert [s.token_ids for s in out.sequences] == hf_beam_search(hf, ids, 3, 6, 1.0, None)
    assert all(s.finish_reason == "length" for s in out.sequences)


def test_beams_share_the_prompt_blocks(tiny_llama_dir, monkeypatch):
    """Each step's beam requests read the prompt's KV blocks from the prefix cache."""
    llm = LLM(tiny_llama_dir, kv_cache_memory="16MiB", block_size=16)
    prompt = llm.get_tokenizer().encode(" ".join(PROMPTS * 3))
    assert len(prompt) >= 32
    full_prompt_blocks = len(prompt) // 16 * 16
    steps, hits, queries = [], 0, 0
    generate, step = llm.generate, llm.llm_engine.step

    def recording_generate(*args, **kwargs):
        outputs = generate(*args, **kwargs)
        steps.append([o.num_cached_tokens for o in outputs])
        return outputs

    def recording_step():
        nonlocal hits, queries
        outputs = step()
        stats = llm.llm_engine.last_stats.prefix_cache_stats
        if stats is not None:
            hits, queries = hits + stats.hits, queries + stats.queries
        return outputs

    monkeypatch.setattr(llm, "generate", recording_generate)
    monkeypatch.setattr(llm.llm_engine, "step", recording_step)
    llm.beam_search([prompt], BeamSearchParams(beam_width=4, max_tokens=5, ignore_eos=True))
    assert len(steps) == 5 and steps[0] == [0]
    for cached in steps[1:]:
        assert len(cached) == 4 and min(cached) >= full_prompt_blocks, steps
    assert hits >= 4 * 4 * full_prompt_blocks and queries > hits
    # and the answer is the one computed without the cache
    uncached = LLM(tiny_llama_dir, kv_cache_memory="16MiB", enable_prefix_caching=False)
    params = BeamSearchParams(beam_width=4, max_tokens=5, ignore_eos=True)
    assert ([s.tokens for s in uncached.beam_search([prompt], params)[0].sequences]
            == [s.tokens for s in llm.beam_search([prompt], params)[0].sequences])


def test_width_one_and_batched_prompts_are_independent(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, kv_cache_memory="16MiB")
    tokenizer = llm.get_tokenizer()
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    params = BeamSearchParams(beam_width=3, max_tokens=6, ignore_eos=True)
    together = llm.beam_search(prompts, params)
    alone = [llm.beam_search([p], params)[0] for p in prompts]
    assert [[s.tokens for s in o.sequences] for o in together] == \
        [[s.tokens for s in o.sequences] for o in alone]
    # width 1 without EOS is greedy decoding
    greedy = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
                          use_tqdm=False)
    narrow = llm.beam_search(prompts, BeamSearchParams(beam_width=1, max_tokens=6,
                                                       ignore_eos=True))
    assert [o.sequences[0].token_ids for o in narrow] == [g.outputs[0].token_ids for g in greedy]


# ---- the rules, on hand-made logprobs -----------------------------------------------------------

EOS = 9


def _lp(**tokens: float) -> dict[int, Logprob]:
    return {int(k.removeprefix("t")): Logprob(v) for k, v in tokens.items()}


def test_an_eos_below_the_width_does_not_finish():
    """Width 2: the step's candidates by cumulative logprob are 5, 6, EOS, 7. The EOS ranks third,
    so (Hugging Face's rule) it is not a hypothesis; vLLM would keep it."""
    search = BeamSearch([1, 2], BeamSearchParams(beam_width=2, max_tokens=3), [EOS])
    search.advance([_lp(t5=-0.1, t6=-0.2, t9=-0.3, t7=-0.4)])
    assert not search.finished
    assert [b.token_ids for b in search.beams] == [[5], [6]]


def test_length_counts_the_eos_and_not_the_prompt():
    search = BeamSearch([1, 2, 3], BeamSearchParams(beam_width=1, max_tokens=4,
                                                    length_penalty=1.0), [EOS])
    search.advance([_lp(t5=-1.0, t6=-3.0)])
    search.advance([_lp(t9=-1.0, t6=-5.0)])  # EOS after one token: 2 generated tokens
    score, seq = search.finished[0]
    assert seq.token_ids == [5] and seq.finish_reason == "stop"
    assert score == pytest.approx(-2.0 / 2)


def test_stops_once_no_beam_can_win():
    """Penalty 0: a live beam's score only falls, so once the W-th finished hypothesis beats the
    best live beam the search is over (long before max_tokens)."""
    search = BeamSearch([1], BeamSearchParams(beam_width=1, max_tokens=50, length_penalty=0.0),
                        [EOS])
    search.advance([_lp(t9=-0.5, t5=-1.0)])
    assert search.done and search.best()[0].cum_logprob == -0.5
    # with a penalty favouring length, the same beam could still win at max_tokens
    search = BeamSearch([1], BeamSearchParams(beam_width=1, max_tokens=50, length_penalty=1.0),
                        [EOS])
    search.advance([_lp(t9=-0.5, t5=-1.0)])
    assert not search.done
