"""A Q8_0 Command-R GGUF run quantized (its weights kept in their blocks, --quantization gguf)
equals the same file dequantized at load: Cohere's q/k row reorder (interleaved rotary to
rotate-half) moves whole rows of blocks, as GLM's does (weight_utils.take_rows)."""

from __future__ import annotations

import torch

from pagedllm import LLM, SamplingParams
from pagedllm.model_executor.layers.linear import UnquantizedLinearMethod
from tests.engine_internals import loaded_model
from tests.models.family_check import random_prompts
from tests.models.test_gguf_families import FAMILIES, write_gguf


def test_quantized_cohere_gguf_equals_dequantized(tiny_model_factory, tmp_path):
    _, config_cls, overrides, _, _ = FAMILIES["command-r"]
    hf_dir = tiny_model_factory(config_cls, **overrides)
    path = write_gguf(hf_dir, str(tmp_path / "tiny-command-r.Q8_0.gguf"), "command-r",
                      q8_0=True)
    prompts = random_prompts([5, 19], 300)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=0)
    runs = {}
    for quantization in ("gguf", "none"):
        llm = LLM(path, quantization=quantization, kv_cache_memory="4MiB")
        q_proj = loaded_model(llm).model.layers[0].self_attn.qkv_proj
        assert isinstance(q_proj.quant_method, UnquantizedLinearMethod) == (
            quantization == "none")
        runs[quantization] = llm.generate(prompts, params, use_tqdm=False)
    for quantized, dequantized in zip(runs["gguf"], runs["none"]):
        assert quantized.outputs[0].token_ids == dequantized.outputs[0].token_ids
        ours, ref = (torch.tensor([step[t].logprob for step, t in
                                   zip(o.outputs[0].logprobs, o.outputs[0].token_ids)])
                     for o in (quantized, dequantized))
        torch.testing.assert_close(ours, ref, atol=2e-3, rtol=0)
