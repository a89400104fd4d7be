"""The random-weight GGUF writer behind benchmarks/make_big_gguf.py, on a tiny config (hidden 64,
2 layers, F32): pagedllm loads what it writes and gives the greedy tokens of transformers reading
the same file, and the copied tokenizer metadata tokenizes like the donor SmolLM2 GGUF."""

from __future__ import annotations

import os

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.benchmarks.random_gguf import RandomLlamaSpec, tensor_shapes, write_random_llama_gguf
from tests.hf_reference import hf_greedy, load_hf_model

pytestmark = [pytest.mark.gguf]

NUM_TOKENS = 12
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    return"]


def _tiny_spec(tie_word_embeddings: bool) -> RandomLlamaSpec:
    # init_std 0.2 (not a real init's 0.02): with hidden 64 a 0.02 init leaves the residual
    # stream to the token's own embedding and greedy decoding just repeats the last prompt token,
    # which any reader that gets the embedding right would reproduce.
    return RandomLlamaSpec(name="tiny-random-llama", hidden_size=64, num_layers=2, num_heads=4,
                           num_kv_heads=2, intermediate_size=128, init_std=0.2, norm_std=0.1,
                           tie_word_embeddings=tie_word_embeddings, seed=1)  # fmt: skip


@pytest.mark.parametrize("tie_word_embeddings", [True, False], ids=["tied", "untied"])
def test_random_gguf_greedy_matches_transformers(tmp_path, smollm2_gguf_path, tie_word_embeddings):
    spec = _tiny_spec(tie_word_embeddings)
    path = write_random_llama_gguf(spec, str(tmp_path / "tiny.gguf"), smollm2_gguf_path, "f32")
    assert not os.path.exists(path + ".partial")
    llm = LLM(path, kv_cache_memory="16MiB", max_model_len=128)
    tokenizer = llm.get_tokenizer()
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    params = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    hf = load_hf_model(str(tmp_path), "tiny.gguf")
    assert hf.config.tie_word_embeddings == tie_word_embeddings
    for prompt, out in zip(prompts, outputs):
        tokens = out.outputs[0].token_ids
        assert tokens == hf_greedy(hf, prompt, NUM_TOKENS)
        assert len(set(tokens)) > 1  # the model computes something, not an echo of one token


def test_random_gguf_tokenizes_like_the_donor(tmp_path, smollm2_gguf_path):
    from gguf import GGUFReader

    from pagedllm.tokenizer.loader import load_tokenizer

    path = write_random_llama_gguf(_tiny_spec(True), str(tmp_path / "t.gguf"), smollm2_gguf_path)
    reader = GGUFReader(path)
    names = [t.name for t in reader.tensors]
    assert names == [name for name, _ in tensor_shapes(_tiny_spec(True), 49152)]
    assert reader.fields["llama.vocab_size"].contents() == 49152
    text = "Hello, world! <|im_start|>user\nπ ≈ 3.14159 — naïve café"
    ours, donor = load_tokenizer(path), load_tokenizer(smollm2_gguf_path)
    assert ours.encode(text) == donor.encode(text)
    assert ours.eos_token_id == donor.eos_token_id
    assert ours.chat_template == donor.chat_template
