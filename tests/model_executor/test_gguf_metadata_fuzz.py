"""GGUF metadata of the wrong type or out of range (seeded, 100 files): a string where a layer
count belongs, a float vocabulary, a head count of 0, a token id past the vocabulary, a missing
required key... Building the config and the tokenizer from each either works or raises a
ValueError naming the key; never a TypeError, KeyError, IndexError or ZeroDivisionError."""

from __future__ import annotations

import random

import numpy as np
import pytest
from gguf import GGUFValueType as T

from pagedllm.model_executor.model_loader.gguf import gguf_hf_config, open_gguf
from pagedllm.model_executor.model_loader.gguf_metadata import GGUFMetadataError
from pagedllm.tokenizer.loader import gguf_byte_level_tokenizer

NUM_CASES = 100
TOKENS = ["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġa"]

BASE: dict[str, tuple[object, T, T | None]] = {
    "llama.block_count": (2, T.UINT32, None),
    "llama.context_length": (64, T.UINT32, None),
    "llama.embedding_length": (32, T.UINT32, None),
    "llama.feed_forward_length": (64, T.UINT32, None),
    "llama.attention.head_count": (4, T.UINT32, None),
    "llama.attention.head_count_kv": (2, T.UINT32, None),
    "llama.attention.layer_norm_rms_epsilon": (1e-5, T.FLOAT32, None),
    "llama.rope.freq_base": (10000.0, T.FLOAT32, None),
    "llama.rope.dimension_count": (8, T.UINT32, None),
    "llama.vocab_size": (len(TOKENS), T.UINT32, None),
    "general.name": ("fuzz", T.STRING, None),
    "tokenizer.ggml.model": ("gpt2", T.STRING, None),
    "tokenizer.ggml.pre": ("smollm", T.STRING, None),
    "tokenizer.ggml.tokens": (TOKENS, T.ARRAY, T.STRING),
    "tokenizer.ggml.token_type": ([3, 1, 1, 1, 1, 1], T.ARRAY, T.INT32),
    "tokenizer.ggml.merges": (["a b", "Ġ a"], T.ARRAY, T.STRING),
    "tokenizer.ggml.bos_token_id": (0, T.UINT32, None),
    "tokenizer.ggml.eos_token_id": (0, T.UINT32, None),
    "tokenizer.ggml.padding_token_id": (0, T.UINT32, None),
    "tokenizer.chat_template": ("{{ messages[0]['content'] }}", T.STRING, None),
}

WRONG: list[tuple[object, T, T | None]] = [  # a value of another type (or range) for any key
    ("12", T.STRING, None), ("", T.STRING, None), (0, T.UINT32, None), (-3, T.INT32, None),
    (2**40, T.UINT64, None), (1.5, T.FLOAT32, None), (float("nan"), T.FLOAT32, None),
    (float("inf"), T.FLOAT64, None), (True, T.BOOL, None), ([7], T.ARRAY, T.UINT8),
    ([1, 2, 3], T.ARRAY, T.UINT32), ([0.5, 1.5], T.ARRAY, T.FLOAT32),
    (["x", "y"], T.ARRAY, T.STRING), ([[1], [2]], T.ARRAY, T.ARRAY), (100, T.UINT32, None),
]


def _write(path: str, metadata: dict[str, tuple[object, T, T | None]]) -> None:
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "llama")  # writes general.architecture = "llama" itself
    for key, (value, vtype, sub_type) in metadata.items():
        if key == "general.architecture":
            writer.kv_data[0][key] = writer.kv_data[0][key].__class__(value, vtype, sub_type)
            continue
        writer.add_key_value(key, value, vtype, sub_type)
    writer.add_tensor("token_embd.weight", np.zeros((len(TOKENS), 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _build(path: str) -> None:
    """What the server builds from a GGUF's metadata: the config, then the tokenizer."""
    gguf_hf_config(path)
    tokenizer = gguf_byte_level_tokenizer(path)
    if tokenizer is not None:
        tokenizer.decode(tokenizer.encode("a ab"))


def test_the_base_file_builds(tmp_path):
    path = str(tmp_path / "base.gguf")
    _write(path, BASE)
    config = gguf_hf_config(path)
    assert (config.num_hidden_layers, config.num_key_value_heads, config.vocab_size) == (2, 2, 6)
    tokenizer = gguf_byte_level_tokenizer(path)
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("ab")) == ["ab"]


def _mutate(rng: random.Random) -> tuple[dict, str]:
    metadata = dict(BASE)
    key = rng.choice([*BASE, "general.architecture"])
    if rng.random() < 0.1 and key.startswith("llama."):
        del metadata[key]
        return metadata, f"drop {key}"
    wrong = rng.choice(WRONG)
    metadata[key] = wrong
    return metadata, f"{key}={wrong[0]!r} ({wrong[1].name})"


def test_wrong_metadata_gives_a_clear_error(tmp_path):
    rng = random.Random(22)
    outcomes = {"built": 0, "refused": 0}
    failures = []
    for case in range(NUM_CASES):
        metadata, what = _mutate(rng)
        path = str(tmp_path / f"case{case}.gguf")  # a new path: open_gguf caches by path
        _write(path, metadata)
        try:
            _build(path)
        except ValueError as e:  # GGUFMetadataError, or "architecture ... not supported"
            if isinstance(e, GGUFMetadataError) and path not in str(e):
                failures.append(f"{what}: the error does not name the file: {e}")
            outcomes["refused"] += 1
        except Exception as e:  # noqa: BLE001 - anything else is what this test hunts
            failures.append(f"{what}: {type(e).__name__}: {e}")
        else:
            outcomes["built"] += 1
        finally:
            open_gguf.cache_clear()
    assert not failures, "\n".join(failures)
    assert outcomes["refused"] > NUM_CASES // 2, outcomes


@pytest.mark.parametrize(("key", "value", "message"), [
    ("llama.block_count", ("2", T.STRING, None), "llama.block_count must be a positive integer"),
    ("llama.attention.head_count", (0, T.UINT32, None), "head_count must be a positive integer"),
    ("tokenizer.ggml.tokens", ([1, 2], T.ARRAY, T.INT32), "tokens must be a list of strings"),
    ("tokenizer.ggml.eos_token_id", (6, T.UINT32, None), "past the vocabulary of 6 tokens"),
    ("tokenizer.ggml.token_type", ([1], T.ARRAY, T.INT32), "1 entries for 6 tokens"),
])
def test_the_error_names_the_key(tmp_path, key, value, message):
    path = str(tmp_path / "named.gguf")
    _write(path, {**BASE, key: value})
    with pytest.raises(GGUFMetadataError, match=message):
        _build(path)
    open_gguf.cache_clear()
