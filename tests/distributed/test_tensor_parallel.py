"""Tensor parallelism (-tp 2) over worker processes: greedy tokens of tiny random models of each
split-aware family equal HF transformers' (fp32) and the same engine's at -tp 1, for mixed
prompt lengths whose prefill is chunked by a 16-token budget (decodes mixed in)."""

from __future__ import annotations

import numpy as np
import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.config import ParallelConfig
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts

MAX_TOKENS = 12
LENGTHS = [1, 7, 23, 40]

FAMILIES = {
    # 4 query heads / 2 KV heads: each rank holds 2 query heads and 1 KV head
    "llama": ("LlamaConfig", {}),
    # per-head q/k norms; 2 KV heads
    "qwen3": ("Qwen3Config", {}),
    # experts split TP-style (every expert's intermediate dim halved), router replicated
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2,
                                  "intermediate_size": 64}),
    # fused per-head query_key_value, partial rotary, biases on the row-parallel layers
    "gpt_neox": ("GPTNeoXConfig", {"num_key_value_heads": None, "rotary_pct": 0.25}),
}


def greedy(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def run_engine(model_dir: str, prompts: list[list[int]], tp: int, **kwargs) -> list[list[int]]:
    llm = LLM(model_dir, kv_cache_memory="16MiB", max_num_batched_tokens=16,
              tensor_parallel_size=tp, **kwargs)
    try:
        tokens = greedy(llm, prompts)
        stats = llm.collective_rpc("collective_stats")
        # the ranks took part in collectives (-tp: 2 all-reduces per layer, the embedding's and
        # the logits' gather per step; -pp: a send or receive and the broadcast per step)
        assert all(s["calls"] > 0 for s in stats) or len(stats) == 1
        return tokens
    finally:
        llm.llm_engine.engine_core.shutdown()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tp2_greedy_equals_tp1_and_hf(tiny_model_factory, family):
    config_cls, overrides = FAMILIES[family]
    model_dir = tiny_model_factory(config_cls, **overrides)
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    expected = [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
    assert run_engine(model_dir, prompts, tp=1) == expected
    assert run_engine(model_dir, prompts, tp=2) == expected


def test_int4_tp2_equals_tp1(tiny_model_factory):
    """--quantization int4: each rank quantizes its float slice as it loads (groups along
    in_features fall inside a rank's columns), so the codes are those of -tp 1."""
    model_dir = tiny_model_factory("LlamaConfig", hidden_size=128, intermediate_size=256)
    prompts = random_prompts(LENGTHS, 384)
    assert (run_engine(model_dir, prompts, tp=2, quantization="int4")
            == run_engine(model_dir, prompts, tp=1, quantization="int4"))


def test_expert_parallel_tp2_equals_hf(tiny_model_factory):
    """--enable-expert-parallel: each rank holds 2 of Mixtral's 4 experts whole."""
    config_cls, overrides = FAMILIES["mixtral"]
    model_dir = tiny_model_factory(config_cls, **overrides)
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    expected = [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
    assert run_engine(model_dir, prompts, tp=2, enable_expert_parallel=True) == expected


@pytest.mark.parametrize("tp, pp", [(2, 2)])
def test_pipeline_parallel_equals_hf(tiny_model_factory, tp, pp):
    """-pp 2 with -tp 2 inside each stage (4 ranks): 3 layers split 2 + 1 over the stages
    (hidden states and residual sent from one to the next; the last stage samples). -pp 2
    alone: test_pipeline_microbatches.py."""
    model_dir = tiny_model_factory("LlamaConfig", num_hidden_layers=3)
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    expected = [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
    assert run_engine(model_dir, prompts, tp=tp, pipeline_parallel_size=pp) == expected


def test_parallel_config_refusals():
    with pytest.raises(ValueError, match="pipeline_parallel_size must be >= 1"):
        ParallelConfig(pipeline_parallel_size=0)
    with pytest.raises(ValueError, match="'uni' runs one rank"):
        ParallelConfig(tensor_parallel_size=2, distributed_executor_backend="uni")
    with pytest.raises(ValueError, match="must be one of"):
        ParallelConfig(distributed_executor_backend="slurm")
    assert ParallelConfig(tensor_parallel_size=2).executor_backend == "mp"
    assert ParallelConfig().executor_backend == "uni"
    assert ParallelConfig(pipeline_parallel_size=2).world_size == 2


def test_step_round_trips_through_the_worker_encoding():
    """What the executor broadcasts decodes back into the same dataclasses (no pickle)."""
    from pagedllm.core.sched.output import (
        CachedRequestData,
        LogprobsLists,
        ModelRunnerOutput,
        NewRequestData,
        SchedulerOutput,
    )
    from pagedllm.executor.messages import (
        decode_call,
        decode_reply,
        encode_call,
        encode_reply,
        make_call,
    )
    from pagedllm.sampling_params import SamplingParams as Params

    params = Params(temperature=0.7, top_k=5, stop=["x"], logit_bias={3: 1.5})
    params._bad_words_token_ids = [[7, 8]]
    step = SchedulerOutput(
        [NewRequestData("a", [1, 2, 3], [], params, [0, 1], 0)],
        CachedRequestData(["b"], [[4]], [17]), {"a": 3, "b": 1}, 4, {"c"},
        {"b": [9]}, ["a"], np.arange(6, dtype=np.int32).reshape(2, 3),
    )  # fmt: skip
    back = decode_call(encode_call(make_call("execute_model", (step,), 0))).step
    assert back.scheduled_new_reqs[0].sampling_params == params
    assert back.scheduled_new_reqs[0].sampling_params._bad_words_token_ids == [[7, 8]]
    assert back.scheduled_cached_reqs == step.scheduled_cached_reqs
    assert back.finished_req_ids == {"c"} and back.scheduled_spec_decode_tokens == {"b": [9]}
    np.testing.assert_array_equal(back.grammar_bitmask, step.grammar_bitmask)
    output = ModelRunnerOutput(["a"], {"a": [5]},
                               logprobs={"a": LogprobsLists([[5, 6]], [[-0.5, -1.0]], [1])})
    assert decode_reply("execute_model", encode_reply(output)) == (None, output)
    assert decode_reply("load_model", encode_reply(error="boom")) == ("boom", None)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_gguf_blocks_narrow_to_a_ranks_slice(qtype):
    """A rank's rows or block-aligned columns of a quantized GGUF tensor, still in blocks,
    dequantize to the same slice of the whole tensor; a split inside a block is refused."""
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from pagedllm.model_executor.model_loader.gguf import GGUFWeight

    values = np.random.default_rng(0).standard_normal((8, 128)).astype(np.float32)
    kind = GGMLQuantizationType[qtype]
    weight = GGUFWeight(quantize(values, kind), kind, (8, 128))
    whole = weight.dequantize()
    assert torch.equal(weight.narrow(1, 64, 64).dequantize(), whole[:, 64:])
    assert torch.equal(weight.narrow(0, 4, 4).dequantize(), whole[4:])
    with pytest.raises(ValueError, match="split"):
        weight.narrow(1, 16, 64)


@pytest.mark.parametrize("expert_parallel", [False, True])
def test_moe_rank_shares_sum_to_the_whole_layer(monkeypatch, expert_parallel):
    """In one process: each rank's FusedMoE (its experts' slices, or its whole experts) loaded
    from the same checkpoint matrices; the ranks' partial outputs sum to the unsplit layer's
    (what the all-reduce computes)."""
    import torch

    from pagedllm.distributed import parallel_state
    from pagedllm.model_executor.layers.moe import FusedMoE

    torch.manual_seed(0)
    num_experts, hidden, inter = 4, 16, 8
    mats = {(e, w): torch.randn(*((hidden, inter) if w == "down" else (inter, hidden)))
            for e in range(num_experts) for w in ("gate", "up", "down")}

    def build() -> FusedMoE:
        layer = FusedMoE(num_experts, 2, hidden, inter)
        for (expert, which), mat in mats.items():
            param = layer.down_proj if which == "down" else layer.gate_up_proj
            layer.weight_loader(param, mat, (expert, which))
        return layer

    x, router = torch.randn(5, hidden), torch.randn(5, num_experts)
    whole = build()(x, router)
    parts = []
    for rank in range(2):
        # a group of 2 without communication: all_reduce returns this rank's part
        group = parallel_state.GroupCoordinator((0, 1), rank, None)
        monkeypatch.setattr(parallel_state, "_TP", group)
        monkeypatch.setattr(parallel_state, "_EP", group if expert_parallel else None)
        layer = build()
        assert layer.num_local_experts == (2 if expert_parallel else 4)
        parts.append(layer(x, router))
    torch.testing.assert_close(parts[0] + parts[1], whole)
