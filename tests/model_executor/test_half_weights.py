"""A bfloat16/float16 model on the CPU: its float weights stay in the half dtype and the compiled
kernels compute in float32, widening each weight exactly as it is read (dense_linear.cpp). So the
numbers are the float32 model's of the same weights, bit for bit, from half the weight bytes; and
dtype "auto" keeps a half checkpoint's dtype (the engine is built as ModelConfig.compute_dtype)."""

from __future__ import annotations

import shutil

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.kernels import cpu_kernels_available
from pagedllm.model_executor.model_loader.config import load_model_config
from tests.hf_reference import hf_greedy, load_hf_model

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels unavailable")


@pytest.fixture(scope="module", params=["bfloat16", "float16"])
def half_checkpoint(request, tiny_llama_dir, tmp_path_factory) -> tuple[str, str]:
    """The tiny Llama saved in a half dtype (config torch_dtype too), with its tokenizer."""
    from transformers import AutoModelForCausalLM

    dtype = request.param
    directory = str(tmp_path_factory.mktemp(f"tiny_llama_{dtype}"))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=getattr(torch, dtype))
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        try:
            shutil.copy(f"{tiny_llama_dir}/{name}", directory)
        except FileNotFoundError:
            pass
    return directory, dtype


def _greedy(llm: LLM, prompts: list[list[int]]):
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=2)
    return llm.generate(prompts, params, use_tqdm=False)


def test_half_checkpoint_keeps_its_dtype_and_float32_numbers(half_checkpoint):
    directory, dtype = half_checkpoint
    config = load_model_config(directory)
    assert (config.dtype, config.compute_dtype) == (dtype, "float32")
    prompts = [[5 + i, 9, 33, 17, 80, 2 + 3 * i][: 3 + i] for i in range(4)]
    half = LLM(directory, kv_cache_memory="16MiB")
    fp32 = LLM(directory, dtype="float32", kv_cache_memory="16MiB")
    ours, reference = _greedy(half, prompts), _greedy(fp32, prompts)
    for a, b in zip(ours, reference):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        # the same bits: every logprob equal, not close
        assert a.outputs[0].logprobs == b.outputs[0].logprobs
    # and the tokens are HF transformers' (float32 on the same weights)
    hf = load_hf_model(directory).float()
    assert [o.outputs[0].token_ids for o in ours] == [hf_greedy(hf, p, 10) for p in prompts]


def test_half_weights_are_stored_half(half_checkpoint):
    from pagedllm.model_executor.model_loader import get_model

    directory, dtype = half_checkpoint
    model = get_model(load_model_config(directory), "cpu")
    layer = model.model.layers[0]
    assert layer.self_attn.qkv_proj.weight.dtype == getattr(torch, dtype)
    assert layer.mlp.down_proj.weight.dtype == getattr(torch, dtype)
    assert model.model.embed_tokens.weight.dtype == getattr(torch, dtype)
    assert model.model.embed_tokens(torch.tensor([1, 2])).dtype == torch.float32
