"""-pp 2 for the families outside Llama's stack (models/pipeline_stage.py): GPT-NeoX at -pp 2
and -tp 2 x -pp 2, greedy tokens equal HF transformers' (fp32; -tp 1 equals HF in
test_tensor_parallel.py, so equal to -tp 1 too); the shared stage logic checked without an
engine: two stages chained equal the whole stack, only the last applies the final norm, and each
stage holds only its own layers. (GPT-2, Phi, Falcon, ... at -pp 2:
test_parallel_more_families.py.)"""

from __future__ import annotations

import pytest

from tests.distributed.test_tensor_parallel import FAMILIES, LENGTHS, MAX_TOKENS, run_engine
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts


@pytest.fixture(scope="module")
def gpt_neox(tiny_model_factory):
    """(model dir, prompts, HF's greedy tokens) of a 3-layer GPT-NeoX (stages of 2 + 1 layers),
    whose -tp 1 run equals HF's (so equal to HF means equal to -tp 1)."""
    config_cls, overrides = FAMILIES["gpt_neox"]
    model_dir = tiny_model_factory(config_cls, **{**overrides, "num_hidden_layers": 3})
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    expected = [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
    assert run_engine(model_dir, prompts, tp=1) == expected
    return model_dir, prompts, expected


@pytest.mark.parametrize("tp, pp", [(1, 2)])  # (tp 2 x pp 2: Llama, test_tensor_parallel.py)
def test_gpt_neox_pipeline_equals_tp1_and_hf(gpt_neox, tp, pp):
    model_dir, prompts, expected = gpt_neox
    assert run_engine(model_dir, prompts, tp=tp, pipeline_parallel_size=pp) == expected


class _Mailbox:
    """A pipeline group stand-in for stage `rank` of `world_size` in one process: send_next
    queues the tensor, recv_prev takes it back (checking the shape and dtype asked for)."""

    def __init__(self, rank: int, world_size: int, queue: list) -> None:
        self.rank_in_group, self.world_size, self.queue = rank, world_size, queue
        self.is_first_rank, self.is_last_rank = rank == 0, rank == world_size - 1

    def send_next(self, x):
        self.queue.append(x.clone())

    def recv_prev(self, shape, dtype):
        x = self.queue.pop(0)
        assert (tuple(x.shape), x.dtype) == (shape, dtype)
        return x


def _toy_stack(carries_residual: bool):
    """A 3-layer PipelineStageStack of the two kinds: layers that return (hidden, residual)
    with the add fused into the next norm, or the summed stream alone."""
    import torch
    from torch import nn

    from pagedllm.model_executor.models.pipeline_stage import PipelineStageStack, add_and_norm

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, hidden, residual):
            if not carries_residual:
                return hidden + torch.tanh(self.proj(hidden)), None
            residual = hidden if residual is None else hidden + residual
            return torch.tanh(self.proj(residual)), residual

    class ResidualNorm(nn.LayerNorm):
        def forward(self, hidden, residual=None):
            stream = hidden if residual is None else hidden + residual
            return super().forward(stream), stream

    class Stack(PipelineStageStack):
        def __init__(self) -> None:
            super().__init__()
            self.carries_residual = carries_residual
            self.embed_tokens = nn.Embedding(16, 8)
            self.layers = self.build_stage_layers(3, 8, lambda i: Layer())
            self.norm = ResidualNorm(8)
            self.norm_calls = 0

        def forward(self, input_ids):
            hidden, residual = self.stage_input(input_ids.shape[0],
                                                lambda: self.embed_tokens(input_ids))
            for layer in self.stage_layers(self.layers):
                hidden, residual = layer(hidden, residual)
            return self.stage_output(hidden, residual, self._final)

        def _final(self, hidden, residual):
            self.norm_calls += 1
            return add_and_norm(self.norm)(hidden, residual)

    return Stack


@pytest.mark.parametrize("carries_residual", [True, False])
def test_two_stages_chained_equal_the_whole_stack(monkeypatch, carries_residual):
    import torch

    from pagedllm.distributed import parallel_state
    from pagedllm.model_executor.models.llama import PPMissingLayer

    stack_cls = _toy_stack(carries_residual)
    torch.manual_seed(0)
    whole = stack_cls()  # (no pipeline group: one stage holding every layer)
    input_ids = torch.tensor([3, 1, 4, 1, 5])
    expected = whole(input_ids)
    queue: list = []
    outputs, stages = [], []
    for rank in range(2):
        monkeypatch.setattr(parallel_state, "_PP", _Mailbox(rank, 2, queue))
        stage = stack_cls()
        stage.load_state_dict(whole.state_dict(), strict=False)  # (its own layers' weights)
        outputs.append(stage(input_ids))
        stages.append(stage)
    # 3 layers: 2 + 1; each stage holds only its own, the other slots are weightless
    assert [(s.start_layer, s.end_layer) for s in stages] == [(0, 2), (2, 3)]
    assert [isinstance(m, PPMissingLayer) for m in stages[0].layers] == [False, False, True]
    assert [isinstance(m, PPMissingLayer) for m in stages[1].layers] == [True, True, False]
    assert not any(".2." in n for n, _ in stages[0].named_parameters())
    # and each drops the other stage's checkpoint tensors before reading them
    names = ["transformer.h.2.attn.c_attn.weight", "h.1.ln_1.bias", "gpt_neox.layers.0.x",
             "model.decoder.layers.2.fc1.weight", "transformer.wte.weight", "lm_head.weight"]
    kept = [[n for n, _ in s.own_layer_weights((n, None) for n in names)] for s in stages]
    assert kept == [names[1:3] + names[4:], [names[0], names[3], *names[4:]]]
    # only the last stage applies the final norm; what the first sent was all received
    assert [s.norm_calls for s in stages] == [0, 1] and not queue
    torch.testing.assert_close(outputs[1], expected, rtol=0, atol=0)


def test_pp_refusal_names_its_reason_for_the_transformers_fallback(monkeypatch):
    """The families above pass the loader's -pp check; the Transformers fallback is refused
    with its reason (not the generic one)."""
    from types import SimpleNamespace

    import pagedllm.distributed as distributed
    from pagedllm.model_executor.model_loader import _check_tensor_parallel
    from pagedllm.model_executor.models.registry import get_model_class

    # (classes loaded before the patch, see test_parallel_refusals.py)
    staged = ["GPTNeoXForCausalLM", "GPT2LMHeadModel", "GPTBigCodeForCausalLM",
              "GPTJForCausalLM", "PhiForCausalLM", "OPTForCausalLM", "FalconForCausalLM",
              "BloomForCausalLM"]  # fmt: skip
    classes = {arch: get_model_class(arch) for arch in [*staged, "OlmoForCausalLM"]}
    monkeypatch.setattr(distributed, "get_pp_group", lambda: SimpleNamespace(world_size=2))
    for arch in staged:
        _check_tensor_parallel(classes[arch], SimpleNamespace(architecture=arch))
    with pytest.raises(ValueError, match="OlmoForCausalLM does not run with pipeline_parallel_"
                                         "size=2 .*transformers runs the whole decoder stack"):
        _check_tensor_parallel(classes["OlmoForCausalLM"],
                               SimpleNamespace(architecture="OlmoForCausalLM"))
