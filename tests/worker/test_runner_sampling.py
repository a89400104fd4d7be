"""The runner's persistent sampling state through the whole engine: penalized requests give the
same tokens alone and batched (seeded ones too), and greedy ones also when preempted then
recomputed (their penalty counts are rebuilt from the resent tokens on resumption, and grown one
token at a time otherwise).

NOTE: a seeded random request restarts its generator when it resumes after a preemption (it joins
the runner anew, as before the persistent batch), so its tokens after that point may differ.
"""

from __future__ import annotations

import random

from pagedllm import LLM, SamplingParams

MAX_TOKENS = 16


def _params(i: int) -> SamplingParams:
    penalties = dict(repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.2)
    if i % 2 == 0:
        return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, **penalties)
    return SamplingParams(
        temperature=0.8, seed=i, top_k=20 if i % 4 == 1 else None, max_tokens=MAX_TOKENS,
        ignore_eos=True, min_tokens=4, **penalties,
    )  # fmt: skip


def _prompts(vocab: int) -> list[list[int]]:
    rng = random.Random(7)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in (30, 41, 25, 38, 33, 27)]


def _run_preempting(llm: LLM, prompts: list[list[int]]) -> tuple[list[list[int]], int]:
    engine = llm.llm_engine
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, _params(i))
    finished, preemptions = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[int(out.request_id)] = list(out.outputs[0].token_ids)
        preemptions += engine.last_stats.num_preemptions if engine.last_stats else 0
    return [finished[i] for i in range(len(prompts))], preemptions


def test_penalized_seeded_requests_alone_batched_and_preempted(tiny_llama_dir, tiny_vocab):
    prompts = _prompts(tiny_vocab)
    params = [_params(i) for i in range(len(prompts))]
    llm = LLM(
        tiny_llama_dir, kv_cache_memory="64MiB", enable_prefix_caching=False, max_model_len=128
    )
    alone = [
        llm.generate([p], [sp], use_tqdm=False)[0].outputs[0].token_ids
        for p, sp in zip(prompts, params)
    ]
    batched = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert batched == alone
    del llm
    preempting = LLM(
        tiny_llama_dir, num_gpu_blocks_override=8, enable_prefix_caching=False, max_model_len=128
    )
    got, preemptions = _run_preempting(preempting, prompts)
    assert preemptions > 0, "the test must force preemption"
    greedy = range(0, len(prompts), 2)
    assert [got[i] for i in greedy] == [alone[i] for i in greedy]
    # The penalties act: without them the greedy rows continue differently.
    plain = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    unpenalized = preempting.generate([prompts[0]], [plain], use_tqdm=False)[0]
    assert unpenalized.outputs[0].token_ids != alone[0]
