"""-pp 2 with micro-batches: the engine core keeps two steps in flight (stage 0 runs step i + 1
while stage 1 runs step i), only the last stage samples and the first learns the tokens from
the next step. Greedy tokens must equal HF's for mixed prompt lengths whose prefill is chunked
(a 16-token budget) under a KV cache small enough to force preemptions, and the run must have
had two steps in flight and preempted at least once (else the test proves nothing)."""

from __future__ import annotations

from pagedllm import LLM, SamplingParams
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts

MAX_TOKENS = 10
LENGTHS = [1, 7, 23, 40, 15, 31]


def test_pp2_microbatches_equal_hf_with_chunking_and_preemption(tiny_model_factory):
    model_dir = tiny_model_factory("LlamaConfig", num_hidden_layers=3)
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size, seed=3)
    expected = [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]

    # 7 blocks of 16 tokens: 112 slots for 6 requests of up to 50 tokens -> preemptions
    llm = LLM(model_dir, num_gpu_blocks_override=7, max_model_len=64,
              max_num_batched_tokens=16, pipeline_parallel_size=2)
    core = llm.llm_engine.engine_core.engine_core
    depth, preempted = [], []
    step, preempt = core.step_with_batch_queue, core.scheduler._preempt

    def recording_step():
        outputs = step()
        depth.append(len(core.batch_queue) + 1)  # (+ the step just read, if any)
        return outputs

    def recording_preempt(request, builder):
        preempted.append(request.request_id)
        preempt(request, builder)

    core.step_with_batch_queue = recording_step
    core.scheduler._preempt = recording_preempt
    try:
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        stats = llm.collective_rpc("pipeline_stats")
    finally:
        core.shutdown()
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert max(depth) == 2, "two micro-batches were never in flight"
    assert preempted, "the KV cache was large enough for every request: no preemption"
    # every rank ran every step (stage 0 answered none of them)
    assert stats[0]["steps"] == stats[1]["steps"] > 0
