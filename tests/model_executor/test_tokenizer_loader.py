"""load_tokenizer: HF directories and the GGUF fast path (same encodings as transformers)."""

from __future__ import annotations

import os
import time

import pytest

from pagedllm.tokenizer.loader import load_tokenizer

TEXTS = [
    "Hello world",
    "  leading spaces and trailing  ",
    "The year 2024 had 366 days; 3.14159 is pi.",
    "def f(x):\n\treturn x ** 2  # square\n\n",
    "Ünïcödé: café, naïve, 日本語, emoji 🚀🔥",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<|im_end|>more",
    "",
]


def test_hf_dir_tokenizer(tiny_llama_dir):
    tokenizer = load_tokenizer(tiny_llama_dir)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    ids = tokenizer.encode("The quick brown fox", add_special_tokens=False)
    assert tokenizer.decode(ids) == "The quick brown fox"
    assert load_tokenizer(tiny_llama_dir) is tokenizer  # cached per path


@pytest.mark.gguf
def test_gguf_tokenizer_matches_transformers(smollm2_gguf_path):
    from transformers import AutoTokenizer

    start = time.perf_counter()
    ours = load_tokenizer(smollm2_gguf_path)
    print(f"GGUF tokenizer load: {time.perf_counter() - start:.2f} s")
    ref = AutoTokenizer.from_pretrained(
        os.path.dirname(smollm2_gguf_path), gguf_file=os.path.basename(smollm2_gguf_path)
    )
    assert len(ours) == len(ref)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == ref.encode(text), text
        assert ours.decode(ids) == ref.decode(ids)
        skip = {"skip_special_tokens": True}
        assert ours.decode(ids, **skip) == ref.decode(ids, **skip)
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token", "eos_token_id",
                 "chat_template"):  # fmt: skip
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert "<|im_start|>" in ours.chat_template
    messages = [{"role": "user", "content": "Hi there"}]
    assert ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    )
    assert ours.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
