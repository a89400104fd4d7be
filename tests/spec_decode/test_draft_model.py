"""Draft-model speculative decoding through the engine on tiny random Llamas: greedy output
equals decoding without speculation (mixed batch, chunked prefill, preemption, prefix hits);
the target as its own draft gets nearly every draft accepted (so the draft model's cache is
kept right across steps); sampled requests stay valid; a bad draft config fails at start-up."""

from __future__ import annotations

import json
import shutil

import pytest

from pagedllm import LLM, SamplingParams
from tests.spec_decode.test_engine import greedy, prompts, run, trace


def spec(draft_dir: str, k: int = 4) -> dict:
    return {"method": "draft_model", "model": draft_dir, "num_speculative_tokens": k,
            "disable_by_batch_size": None, "draft_token_cost": 0.01}


@pytest.fixture(scope="module")
def other_draft_dir(tiny_llama_factory) -> str:
    """Same tokenizer, different random weights: a draft the target often disagrees with."""
    return tiny_llama_factory(seed=1)


@pytest.mark.parametrize("engine_kwargs", [
    {"kv_cache_memory": "32MiB"},
    {"kv_cache_memory": "32MiB", "max_num_batched_tokens": 16},  # chunked prefill
    {"num_gpu_blocks_override": 16, "enable_prefix_caching": False},  # preemption
])
@pytest.mark.parametrize("draft", ["self", "other"])
def test_greedy_with_a_draft_model_equals_without(tiny_llama_dir, other_draft_dir, reference,
                                                  engine_kwargs, draft):
    token_prompts, params, expected = reference
    draft_dir = tiny_llama_dir if draft == "self" else other_draft_dir
    llm = LLM(tiny_llama_dir, max_model_len=256, speculative_config=spec(draft_dir),
              **engine_kwargs)
    for _ in range(2):  # the second round hits the prefix cache where it is on
        outs, stats = run(llm, token_prompts, params)
        assert [trace(o) for o in outs] == expected
        assert stats.num_drafts > 0, stats
        if draft == "self":
            # the same model drafting: only float noise between a one-token forward and the
            # verifying forward could disagree
            assert stats.num_accepted_tokens >= 0.95 * stats.num_draft_tokens, stats
        if "num_gpu_blocks_override" in engine_kwargs:
            assert stats.num_preemptions > 0, "16 blocks of 16 tokens must force preemption"


def test_sampled_requests_with_a_draft_model(tiny_llama_dir, other_draft_dir, tiny_vocab):
    token_prompts = prompts(tiny_vocab, 4)
    params = [SamplingParams(temperature=0.8, max_tokens=40, ignore_eos=True),
              SamplingParams(temperature=1.0, top_k=20, max_tokens=40, ignore_eos=True),
              greedy(),
              SamplingParams(temperature=0.9, seed=3, max_tokens=20)]
    for draft_dir in (tiny_llama_dir, other_draft_dir):
        llm = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
                  speculative_config=spec(draft_dir))
        outs, stats = run(llm, token_prompts, params)
        assert stats.num_drafts > 0
        assert [len(o.token_ids) for o in outs[:2]] == [40, 40]
        assert all(0 <= t < tiny_vocab for o in outs for t in o.token_ids)
    # the seeded request is the one it would be without speculation
    plain = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256)
    want, _ = run(plain, token_prompts[3:], params[3:])
    assert trace(outs[3]) == trace(want[0])


@pytest.mark.parametrize("top_k", [None, 5])
def test_seeded_requests_draft_with_the_targets_noise(tiny_llama_dir, tiny_vocab, top_k):
    """A seeded request's draft for position t takes the noise the target draws there, so a
    draft model equal to the target proposes exactly the token the target samples: nearly
    everything is accepted (top-k included: the draft truncates like the request), and the
    output is the one decoding without drafts gives."""
    params = [SamplingParams(temperature=t, seed=s, top_k=top_k, max_tokens=40, ignore_eos=True)
              for t, s in ((0.7, 1), (1.0, 2), (1.3, 3))]
    token_prompts = prompts(tiny_vocab, 3)
    llm = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
              speculative_config=spec(tiny_llama_dir))
    outs, stats = run(llm, token_prompts, params)
    assert stats.num_draft_tokens > 40, stats
    assert stats.num_accepted_tokens >= 0.95 * stats.num_draft_tokens, stats
    plain = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256)
    want, _ = run(plain, token_prompts, params)
    assert [trace(o) for o in outs] == [trace(o) for o in want]


def test_sampling_with_itself_as_draft_accepts_nearly_everything(tiny_llama_dir, tiny_vocab):
    """q == p: min(1, p/q) is 1 up to float noise. Top-k, top-p and min-p included: the draft
    model truncates its distribution like the request (without that, q would keep the mass p
    drops, and acceptance would fall to about p's share of q)."""
    llm = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
              speculative_config=spec(tiny_llama_dir))
    params = [SamplingParams(temperature=t, max_tokens=40, **kw) for t, kw in
              ((0.5, {}), (1.0, {"top_k": 5}), (1.5, {"top_p": 0.7, "min_p": 0.05}))]
    outs, stats = run(llm, prompts(tiny_vocab, 3), params)
    assert all(len(o.token_ids) == 40 for o in outs)
    assert stats.num_accepted_tokens >= 0.95 * stats.num_draft_tokens, stats


def test_draft_model_config_errors(tiny_llama_dir, tmp_path):
    with pytest.raises(ValueError, match="needs \"model\""):
        LLM(tiny_llama_dir, speculative_config={"method": "draft_model"})
    with pytest.raises(ValueError, match="draft_model options"):
        LLM(tiny_llama_dir, speculative_config={"method": "ngram", "model": tiny_llama_dir})
    # a draft whose config declares another vocabulary (refused before any weight loads)
    other_vocab = tmp_path / "other_vocab"
    shutil.copytree(tiny_llama_dir, other_vocab)
    config = json.loads((other_vocab / "config.json").read_text())
    config["vocab_size"] += 16
    (other_vocab / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="vocabulary"):
        LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
            speculative_config={"method": "draft_model", "model": str(other_vocab)})


def test_draft_cache_follows_accepted_and_rejected_drafts(tiny_llama_dir, other_draft_dir,
                                                          tiny_vocab):
    """Step after step, whatever part of the last drafts the target kept, each draft's q is
    the draft model's distribution after the request's tokens and the drafts before it (HF
    transformers on the whole sequence as the reference): a draft cache that kept a rejected
    draft's K/V, or lost an accepted one's, would give other numbers."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from pagedllm.engine.arg_utils import EngineArgs
    from pagedllm.spec_decode.draft_model import DraftRequest, build_draft_model_drafter

    config = EngineArgs(tiny_llama_dir, max_model_len=256, kv_cache_memory="32MiB",
                        speculative_config=spec(other_draft_dir)).create_engine_config()
    proposer = build_draft_model_drafter(config, torch.device("cpu"), 4096).model_proposer
    hf = AutoModelForCausalLM.from_pretrained(other_draft_dir, torch_dtype=torch.float32)
    temperature = {"a": 0.0, "b": 0.7}  # a: greedy drafts, b: sampled ones
    token_lists = dict(zip(temperature, prompts(tiny_vocab, 2)))
    for req_id in token_lists:
        proposer.add_request(req_id)
    rng = np.random.default_rng(0)
    for step in range(6):
        k = 2 + step % 3
        with torch.inference_mode():
            drafts = proposer.propose([DraftRequest(r, np.array(t), k, temperature[r])
                                       for r, t in token_lists.items()])
        for req_id, tokens in token_lists.items():
            draft = drafts[req_id]
            with torch.no_grad():
                logits = hf(torch.tensor([tokens + draft.token_ids[:-1]])).logits[0, -k:]
            if temperature[req_id] == 0:
                assert draft.probs is None
                assert draft.token_ids == logits.argmax(dim=1).tolist(), (step, req_id)
            else:
                want = (logits / temperature[req_id]).softmax(dim=1)
                torch.testing.assert_close(draft.probs, want, atol=1e-4, rtol=1e-3)
            # the target keeps some drafts (all, none or a prefix) and adds a token of its own
            kept = int(rng.integers(0, k + 1))
            tokens += draft.token_ids[:kept] + [int(rng.integers(3, tiny_vocab))]
