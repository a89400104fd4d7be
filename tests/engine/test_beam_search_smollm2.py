"""Beam search on the real SmolLM2-135M-Instruct (GGUF, dequantized to fp32 on both sides) equals
transformers' beam search reading the same GGUF, with beams that end on the model's own EOS.
Configuration as in tests/engine/test_beam_search.py (early_stopping="never")."""

from __future__ import annotations

import os

import pytest

from pagedllm import LLM, BeamSearchParams
from tests.hf_reference import hf_beam_search, load_hf_model

pytestmark = [pytest.mark.gguf, pytest.mark.slow]


def test_smollm2_beam_search_matches_transformers(smollm2_gguf_path):
    llm = LLM("SmolLM2-135M-Instruct", kv_cache_memory="256MiB", max_model_len=512,
              quantization="none")
    tokenizer = llm.get_tokenizer()
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? One word."}],
        add_generation_prompt=True, tokenize=False)
    prompt = tokenizer.encode(chat, add_special_tokens=False)
    params = BeamSearchParams(beam_width=3, max_tokens=12, length_penalty=1.0,
                              include_stop_str_in_output=True)
    output = llm.beam_search([prompt], params)[0]
    eos = list(llm.llm_engine.config.model.eos_token_ids)
    hf = load_hf_model(os.path.dirname(smollm2_gguf_path), os.path.basename(smollm2_gguf_path))
    assert [s.token_ids for s in output.sequences] == hf_beam_search(hf, prompt, 3, 12, 1.0, eos)
    assert output.sequences[0].finish_reason == "stop"
    assert "Paris" in tokenizer.decode(output.sequences[0].token_ids)
