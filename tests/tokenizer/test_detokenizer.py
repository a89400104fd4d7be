import random

import pytest

from pagedllm.tokenizer.detokenizer import IncrementalDetokenizer, decode_tokens

TEXTS = [
    "Hello world",
    "Café naïve résumé — “quotes” …",
    "日本語のテキスト、中文文本。한국어",
    "Party 🎉🚀 family 👨‍👩‍👧‍👦 flag 🇫🇷 thumbs 👍🏽!",
    "  leading spaces\n\nnew lines\tand tabs   trailing  ",
    "mixed: aé中🎉b\n🎉\n",
    "<|im_start|>assistant\nHi 😀<|im_end|> after<|endoftext|>",
]


def _stream(tokenizer, prompt_ids, output_ids, skip_special_tokens=True, chunk=1):
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens)
    deltas = [
        detok.update(output_ids[i : i + chunk]) for i in range(0, len(output_ids), chunk)
    ]
    deltas.append(detok.flush())
    return detok, deltas


def _check(tokenizer, prompt_ids, output_ids, skip_special_tokens, chunk=1):
    detok, deltas = _stream(tokenizer, prompt_ids, output_ids, skip_special_tokens, chunk)
    expected = tokenizer.decode(output_ids, skip_special_tokens=skip_special_tokens)
    if "\ufffd" not in expected:
        assert all("\ufffd" not in d for d in deltas), deltas
    assert "".join(deltas) == expected == detok.output_text
    assert detok.output_token_ids == output_ids


def _encode(tokenizer, text):
    encoded = tokenizer.encode(text)
    return encoded.ids if hasattr(encoded, "ids") else encoded


@pytest.mark.parametrize("skip_special_tokens", [True, False])
@pytest.mark.parametrize("text", TEXTS)
def test_small_bpe_one_token_at_a_time(small_bpe, text, skip_special_tokens) -> None:
    raw, hf = small_bpe
    for tokenizer in (raw, hf):
        prompt = _encode(tokenizer, "<|im_start|>user\nSay 中文 🎉<|im_end|>")
        output = _encode(tokenizer, text)
        assert len(output) > len(text) // 4  # many multi-byte chars span several tokens
        _check(tokenizer, prompt, output, skip_special_tokens)
        _check(tokenizer, [], output, skip_special_tokens, chunk=3)


def test_partial_character_is_held_back(small_bpe) -> None:
    raw, _ = small_bpe
    ids = _encode(raw, "🎉")
    pieces = [raw.decode([i]) for i in ids]
    assert len(ids) > 1 and "\ufffd" in "".join(pieces)  # one emoji, several byte tokens
    detok = IncrementalDetokenizer(raw, [])
    assert [detok.update([i]) for i in ids] == [""] * (len(ids) - 1) + ["🎉"]


def test_random_token_sequences(small_bpe) -> None:
    """Arbitrary ids (invalid UTF-8 included): the concatenation still equals the decode."""
    raw, _ = small_bpe
    rng = random.Random(0)
    vocab = raw.get_vocab_size()
    for _ in range(200):
        output = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
        _check(raw, [rng.randrange(vocab) for _ in range(3)], output, rng.random() < 0.5)


def test_decode_tokens(small_bpe) -> None:
    raw, _ = small_bpe
    ids = _encode(raw, "Hi<|im_end|>")
    cache: dict[int, str] = {}
    texts = decode_tokens(raw, ids, cache)
    assert texts[-1] == "<|im_end|>" and "".join(texts) == "Hi<|im_end|>"
    assert decode_tokens(raw, ids, cache) == texts and set(cache) == set(ids)


@pytest.mark.slow
@pytest.mark.gguf
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_smollm2_tokenizer(smollm2_tokenizer, skip_special_tokens) -> None:
    tokenizer = smollm2_tokenizer
    prompt = tokenizer.encode("<|im_start|>user\nTranslate 🎉 to 日本語<|im_end|>\n")
    for text in TEXTS:
        _check(tokenizer, prompt, tokenizer.encode(text), skip_special_tokens)
    rng = random.Random(1)
    for _ in range(50):
        output = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 40))]
        _check(tokenizer, prompt, output, skip_special_tokens)
