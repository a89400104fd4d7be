"""Benchmark workloads: seeded random prompts in their length ranges, ShareGPT parsing and
filtering, and the dataset flags."""

from __future__ import annotations

import argparse
import json

import pytest

from pagedllm.benchmarks.datasets import (
    MIN_TOKEN_ID,
    add_dataset_args,
    first_exchange,
    input_range,
    length_range,
    output_range,
    random_requests,
    requests_from_args,
    sharegpt_requests,
)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    add_dataset_args(parser, default_num_prompts=8)
    return parser.parse_args(list(argv))


def test_random_requests_are_deterministic_and_in_range():
    a = random_requests(50, (10, 20), (3, 7), vocab_size=384, seed=7)
    b = random_requests(50, (10, 20), (3, 7), vocab_size=384, seed=7)
    c = random_requests(50, (10, 20), (3, 7), vocab_size=384, seed=8)
    assert a == b
    assert a != c
    assert all(10 <= r.prompt_len <= 20 and 3 <= r.output_len <= 7 for r in a)
    ids = [t for r in a for t in r.prompt_token_ids]
    assert min(ids) >= MIN_TOKEN_ID and max(ids) < 384
    # The ranges are used, not just their ends.
    assert len({r.prompt_len for r in a}) > 5 and len({r.output_len for r in a}) == 5


def test_fixed_lengths_and_vocab_check():
    requests = random_requests(5, (16, 16), (4, 4), vocab_size=200, seed=0)
    assert [r.prompt_len for r in requests] == [16] * 5
    assert [r.output_len for r in requests] == [4] * 5
    with pytest.raises(ValueError, match="vocab size"):
        random_requests(1, (4, 4), (4, 4), vocab_size=MIN_TOKEN_ID, seed=0)
    with pytest.raises(ValueError, match="1 <= min <= max"):
        random_requests(1, (8, 4), (4, 4), vocab_size=384, seed=0)


def test_length_range_matches_vllm_random_dataset():
    assert length_range(100, 0.0) == (100, 100)
    assert length_range(100, 0.25) == (75, 125)
    assert length_range(10, 0.33) == (6, 14)  # floor(6.7), ceil(13.3)
    assert length_range(1, 0.9) == (1, 2)
    with pytest.raises(ValueError, match="range ratio"):
        length_range(100, 1.0)


def test_dataset_flags():
    assert input_range(_args()) == (32, 256)
    assert output_range(_args()) == (128, 128)
    args = _args("--input-len", "64", "--output-len", "10", "--range-ratio", "0.5")
    assert input_range(args) == (32, 96) and output_range(args) == (5, 15)
    args = _args("--input-len", "64", "--min-input", "3", "--max-input", "9")
    assert input_range(args) == (3, 9)  # explicit bounds win
    with pytest.raises(ValueError, match="go together"):
        input_range(_args("--min-input", "3"))


def test_requests_from_args_checks_max_model_len(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    args = _args("--input-len", "40", "--output-len", "30", "--num-prompts", "3")
    assert len(requests_from_args(args, tokenizer, max_model_len=70)) == 3
    with pytest.raises(ValueError, match="max_model_len 69"):
        requests_from_args(args, tokenizer, max_model_len=69)


LONG = "The quick brown fox jumps over the lazy dog. " * 3
SHAREGPT = [
    {
        "id": "ok",
        "conversations": [
            {"from": "human", "value": "What is the capital of France?"},
            {"from": "gpt", "value": LONG},
            {"from": "human", "value": "ignored"},
        ],
    },
    {
        "id": "greeting-first",
        "conversations": [
            {"from": "gpt", "value": "Hello!"},
            {"from": "human", "value": "Once upon a time, there"},
            {"from": "gpt", "value": "lived an old fisherman and his wife by the sea."},
        ],
    },
    {
        "id": "short-reply",
        "conversations": [
            {"from": "human", "value": "Tell me about the history of the Roman Empire."},
            {"from": "gpt", "value": "No."},
        ],
    },
    {
        "id": "short-prompt",
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": LONG}],
    },
    {"id": "no-reply", "conversations": [{"from": "human", "value": "Anyone there?"}]},
    {
        "id": "human-twice",
        "conversations": [{"from": "human", "value": "one"}, {"from": "human", "value": "two"}],
    },
    {"id": "empty", "conversations": []},
]


def test_first_exchange():
    pairs = [first_exchange(e) for e in SHAREGPT]
    assert pairs[0] == ("What is the capital of France?", LONG)
    assert pairs[1] == (
        "Once upon a time, there",
        "lived an old fisherman and his wife by the sea.",
    )
    assert pairs[4:] == [None, None, None]
    assert first_exchange(
        {
            "conversation": [
                {"role": "user", "content": "a b"},
                {"role": "assistant", "content": "c"},
            ]
        }
    ) == ("a b", "c")


def test_sharegpt_requests(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(SHAREGPT))
    requests = sharegpt_requests(str(path), tokenizer, num=10, seed=0)
    by_prompt = {r.prompt: r for r in requests}
    # short-reply (completion < 4 tokens) and short-prompt ("Hi" < 4 tokens) are skipped.
    assert set(by_prompt) == {"What is the capital of France?", "Once upon a time, there"}
    ok = by_prompt["What is the capital of France?"]
    assert ok.prompt_token_ids == tokenizer.encode(ok.prompt)
    assert ok.output_len == len(tokenizer.encode(LONG, add_special_tokens=False))
    # A fixed output length replaces the completion's and lifts its too-short check.
    fixed = sharegpt_requests(str(path), tokenizer, num=10, seed=0, output_len=2)
    assert {r.output_len for r in fixed} == {2} and len(fixed) == 3
    # prompt + output must fit the model; num caps the count; the seed shuffles.
    assert len(sharegpt_requests(str(path), tokenizer, num=1, seed=0)) == 1
    assert all(
        r.prompt_len + r.output_len <= 20
        for r in sharegpt_requests(
            str(path), tokenizer, num=10, seed=0, output_len=4, max_model_len=20
        )
    )
    with pytest.raises(ValueError, match="no conversation fits"):
        sharegpt_requests(str(path), tokenizer, num=10, seed=0, max_model_len=5)
