"""-tp 2 on the fused CPU stack (each layer cut at its o_proj / down_proj all-reduces,
worker/fused_cpu_stack.py): every rank's steps ran through the fused stack (its counters, read
over collective_rpc), greedy tokens equal transformers', and each token's logprob is the same
float as the eager -tp 2 engine's (the same operators in the same order, so any skipped or
misplaced all-reduce shows there) and as the same prompt's run alone (batch invariance).
Tiny random Llama (4 query / 2 KV heads), Qwen3 (per-head q/k norms) and Gemma 2 (sandwich
norms applied to the summed outputs, GeGLU, soft caps, a sliding window); int4 codes with int8
activations and bf16 weights equal -tp 1. The real SmolLM2's fused -tp 3 (fp32 and Q4_1):
test_tensor_parallel_smollm2.py."""

from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.kernels import cpu_kernels_available
from tests.distributed.test_tensor_parallel import LENGTHS
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts
from tests.models.test_gemma import VARIANTS as GEMMA_VARIANTS

pytestmark = pytest.mark.skipif(not cpu_kernels_available(),
                                reason="the fused stack needs the compiled CPU kernels")

MAX_TOKENS = 8
FAMILIES = {"llama": ("LlamaConfig", {}), "qwen3": ("Qwen3Config", {}),
            "gemma2": GEMMA_VARIANTS["gemma2"]}  # fmt: skip

Trace = tuple[tuple[int, ...], tuple[float, ...]]
"""A completion's token ids and each token's logprob."""


def traces(llm: LLM, prompts: list[list[int]]) -> list[Trace]:
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=1)
    out = []
    for o in llm.generate(prompts, params, use_tqdm=False):
        ids = tuple(o.outputs[0].token_ids)
        out.append((ids, tuple(step[t].logprob for step, t in zip(o.outputs[0].logprobs, ids))))
    return out


def assert_fused_tp_ran(llm: LLM, num_layers: int) -> None:
    """Every rank ran its steps through the fused stack in halves, with 2 all-reduces a layer."""
    stats = llm.collective_rpc("execution_stats")
    collectives = llm.collective_rpc("collective_stats")
    assert len(stats) == 2
    for rank, (s, c) in enumerate(zip(stats, collectives)):
        assert s["strategy"].startswith("fused_cpu_stack (tensor_parallel_size=2"), (rank, s)
        steps = s["fused_tensor_parallel_steps"]
        assert steps > 0 and steps == s["fused_steps"], (rank, s)
        assert c["calls"] >= 2 * num_layers * steps, (rank, c, s)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_case(request, tiny_model_factory):
    """(model_dir, prompts, HF greedy tokens, tp-2 fused engine's traces, its stats checked)."""
    config_cls, overrides = FAMILIES[request.param]
    model_dir = tiny_model_factory(config_cls, **overrides)
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    expected = [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
    llm = LLM(model_dir, kv_cache_memory="16MiB", max_num_batched_tokens=16,
              tensor_parallel_size=2)
    try:
        together = traces(llm, prompts)
        assert_fused_tp_ran(llm, hf.config.num_hidden_layers)
        alone = [traces(llm, [p])[0] for p in prompts]
    finally:
        llm.llm_engine.engine_core.shutdown()
    return request.param, model_dir, prompts, expected, together, alone


def test_fused_tp2_greedy_equals_hf(family_case):
    _, _, _, expected, together, _ = family_case
    assert [list(ids) for ids, _ in together] == expected


def test_fused_tp2_is_batch_invariant(family_case):
    """Alone or in a batch of 4 mixed-length prompts (chunked prefills with decodes mixed in):
    the same tokens and the same logprob bits."""
    _, _, _, _, together, alone = family_case
    assert alone == together


def test_fused_tp2_equals_eager_tp2_bitwise(family_case):
    """The fused halves run the eager layers' operators in the same order, the all-reduces at
    the same points: the logprobs are the same floats (llama only: one eager engine suffices
    to show the cut points are right; the others are checked against HF above)."""
    name, model_dir, prompts, _, together, _ = family_case
    if name != "llama":
        pytest.skip("one family is enough for the bitwise eager comparison")
    llm = LLM(model_dir, kv_cache_memory="16MiB", max_num_batched_tokens=16,
              tensor_parallel_size=2, enforce_eager=True)
    try:
        eager = traces(llm, prompts)
        assert all(s["strategy"].startswith("eager") for s in
                   llm.collective_rpc("execution_stats"))
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert eager == together


@pytest.mark.parametrize("engine_kwargs", [
    {"quantization": "int4", "quantized_activation_dtype": "int8"},  # row-interleaved codes
    {"dtype": "bfloat16"},  # bf16 weights widened by the dense kernel
], ids=["int4-int8act", "bf16"])  # fmt: skip
def test_fused_tp2_quantized_equals_tp1(tiny_model_factory, engine_kwargs):
    """Each rank's fused stack reads its shard in the layout its quant method repacked (int4
    groups of 32 along the inputs fall inside a rank's columns: hidden 128, MLP 256), so the
    tokens are -tp 1's."""
    model_dir = tiny_model_factory("LlamaConfig", hidden_size=128, intermediate_size=256)
    prompts = random_prompts(LENGTHS, 384)
    tokens = {}
    for tp in (1, 2):
        llm = LLM(model_dir, kv_cache_memory="16MiB", max_num_batched_tokens=16,
                  tensor_parallel_size=tp, **engine_kwargs)
        try:
            tokens[tp] = [ids for ids, _ in traces(llm, prompts)]
            if tp == 2:
                assert_fused_tp_ran(llm, num_layers=2)
        finally:
            llm.llm_engine.engine_core.shutdown()
    assert tokens[2] == tokens[1]
