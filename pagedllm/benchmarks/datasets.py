"""Benchmark workloads: token-id prompts with the exact number of tokens to generate.

random    seeded random token ids (never the lowest MIN_TOKEN_ID ids, where most vocabularies
          keep their special tokens); lengths uniform in a range given as --input-len and
          --range-ratio (vLLM's random dataset) or as --min-input/--max-input
sharegpt  a ShareGPT-format JSON file: the first human turn is the prompt, the length in tokens
          of the gpt turn after it the output length; pairs too short or too long are skipped
          as vLLM does
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass
from typing import Any

MIN_TOKEN_ID = 100
"""Random prompts draw ids from [MIN_TOKEN_ID, vocab_size)."""
DEFAULT_INPUT_RANGE = (32, 256)
"""Random prompt lengths when neither --input-len nor --min/--max-input is given."""
DEFAULT_OUTPUT_LEN = 128
SHAREGPT_MIN_LEN = 4
"""ShareGPT pairs whose prompt or completion has fewer tokens are skipped (vLLM's rule)."""
SHAREGPT_MAX_PROMPT_LEN = 1024
SHAREGPT_MAX_TOTAL_LEN = 2048
_HUMAN = ("human", "user")
_GPT = ("gpt", "assistant", "chatgpt", "bard", "model")


@dataclass(frozen=True)
class SampleRequest:
    """One benchmark request: generate exactly `output_len` tokens after the prompt."""

    prompt_token_ids: list[int]
    output_len: int
    prompt: str | None = None
    """The prompt text (ShareGPT), for reference only: engines are given the token ids."""

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def length_range(length: int, range_ratio: float) -> tuple[int, int]:
    """vLLM's random dataset: [floor(length * (1 - r)), ceil(length * (1 + r))], at least 1."""
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"range ratio must be in [0, 1), got {range_ratio}")
    if length < 1:
        raise ValueError(f"length must be at least 1, got {length}")
    low = max(1, math.floor(length * (1.0 - range_ratio)))
    return low, max(low, math.ceil(length * (1.0 + range_ratio)))


def random_requests(
    num: int,
    input_range: tuple[int, int],
    output_range: tuple[int, int],
    vocab_size: int,
    seed: int,
) -> list[SampleRequest]:
    """`num` requests whose lengths are uniform in the (inclusive) ranges; same seed, same
    requests."""
    _check_range("input", input_range)
    _check_range("output", output_range)
    if vocab_size <= MIN_TOKEN_ID:
        raise ValueError(f"vocab size {vocab_size} leaves no ids above the lowest {MIN_TOKEN_ID}")
    rng = random.Random(seed)
    requests = []
    for _ in range(num):
        prompt_len = rng.randint(*input_range)
        output_len = rng.randint(*output_range)
        ids = [rng.randrange(MIN_TOKEN_ID, vocab_size) for _ in range(prompt_len)]
        requests.append(SampleRequest(ids, output_len))
    return requests


def _check_range(what: str, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if low < 1 or high < low:
        raise ValueError(f"{what} lengths must satisfy 1 <= min <= max, got {low}..{high}")


def sharegpt_requests(
    path: str,
    tokenizer: Any,
    num: int,
    seed: int,
    output_len: int | None = None,
    max_model_len: int | None = None,
) -> list[SampleRequest]:
    """Up to `num` valid (prompt, completion) pairs of a ShareGPT JSON file, shuffled with `seed`.
    output_len overrides the completion's length (and then its too-short check)."""
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: a ShareGPT file is a JSON list of conversations")
    pairs = [pair for pair in map(first_exchange, entries) if pair is not None]
    random.Random(seed).shuffle(pairs)
    max_total = min(SHAREGPT_MAX_TOTAL_LEN, max_model_len or SHAREGPT_MAX_TOTAL_LEN)
    requests: list[SampleRequest] = []
    for prompt, completion in pairs:
        if len(requests) == num:
            break
        prompt_ids = tokenizer.encode(prompt)
        completion_len = len(tokenizer.encode(completion, add_special_tokens=False))
        n_out = output_len or completion_len
        if is_valid_pair(len(prompt_ids), n_out, max_total, check_output=output_len is None):
            requests.append(SampleRequest(list(prompt_ids), n_out, prompt))
    if not requests:
        raise ValueError(
            f"{path}: no conversation fits (prompt >= {SHAREGPT_MIN_LEN} tokens, "
            f"prompt + output <= {max_total})"
        )
    return requests


def first_exchange(entry: Any) -> tuple[str, str] | None:
    """(first human turn, the gpt turn right after it), or None if the entry has no such pair."""
    if not isinstance(entry, dict):
        return None
    turns = entry.get("conversations") or entry.get("conversation")
    if not isinstance(turns, list):
        return None
    for turn, reply in zip(turns, turns[1:]):
        if _role(turn) in _HUMAN:
            if _role(reply) in _GPT and _text(turn) and _text(reply):
                return _text(turn), _text(reply)
            return None
    return None


def _role(turn: Any) -> str | None:
    return str(turn.get("from", turn.get("role", ""))).lower() if isinstance(turn, dict) else None


def _text(turn: dict) -> str:
    return str(turn.get("value", turn.get("content", "")) or "")


def is_valid_pair(
    prompt_len: int, output_len: int, max_total_len: int, check_output: bool = True
) -> bool:
    """vLLM's ShareGPT filter: neither side too short, the prompt and the sum not too long."""
    too_short = prompt_len < SHAREGPT_MIN_LEN or (check_output and output_len < SHAREGPT_MIN_LEN)
    too_long = prompt_len > SHAREGPT_MAX_PROMPT_LEN or prompt_len + output_len > max_total_len
    return output_len >= 1 and not too_short and not too_long


# ---- command line --------------------------------------------------------------------------------


def add_dataset_args(parser: argparse.ArgumentParser, default_num_prompts: int | None) -> None:
    group = parser.add_argument_group("dataset")
    group.add_argument(
        "--dataset-name",
        default="random",
        choices=["random", "sharegpt"],
        help="random token ids, or a ShareGPT JSON file (--dataset-path)",
    )
    group.add_argument("--dataset-path", default=None, help="ShareGPT-format JSON file")
    group.add_argument(
        "--num-prompts",
        type=int,
        default=default_num_prompts,
        help=f"requests to run (default {default_num_prompts})",
    )
    group.add_argument(
        "--input-len",
        type=int,
        default=None,
        help="random: mean prompt length (default: --min-input..--max-input, else "
        f"{DEFAULT_INPUT_RANGE[0]}..{DEFAULT_INPUT_RANGE[1]})",
    )
    group.add_argument(
        "--output-len",
        type=int,
        default=None,
        help=f"random: mean output length (default {DEFAULT_OUTPUT_LEN}); "
        "sharegpt: overrides each completion's length",
    )
    group.add_argument(
        "--range-ratio",
        type=float,
        default=0.0,
        help="random: lengths uniform in [len * (1 - r), len * (1 + r)]",
    )
    group.add_argument("--min-input", type=int, default=None, help="random: shortest prompt")
    group.add_argument("--max-input", type=int, default=None, help="random: longest prompt")
    group.add_argument("--min-output", type=int, default=None, help="random: shortest output")
    group.add_argument("--max-output", type=int, default=None, help="random: longest output")


def input_range(args: argparse.Namespace) -> tuple[int, int]:
    return _range_from(
        args.input_len,
        args.range_ratio,
        args.min_input,
        args.max_input,
        "input",
        DEFAULT_INPUT_RANGE,
    )


def output_range(args: argparse.Namespace) -> tuple[int, int]:
    return _range_from(
        args.output_len,
        args.range_ratio,
        args.min_output,
        args.max_output,
        "output",
        (DEFAULT_OUTPUT_LEN, DEFAULT_OUTPUT_LEN),
    )


def _range_from(
    length: int | None,
    ratio: float,
    low: int | None,
    high: int | None,
    what: str,
    default: tuple[int, int],
) -> tuple[int, int]:
    if low is not None or high is not None:
        if low is None or high is None:
            raise ValueError(f"--min-{what} and --max-{what} go together")
        _check_range(what, (low, high))
        return low, high
    if length is None:
        return default
    return length_range(length, ratio)


def requests_from_args(
    args: argparse.Namespace,
    tokenizer: Any,
    num: int | None = None,
    max_model_len: int | None = None,
) -> list[SampleRequest]:
    """The workload the dataset flags describe (`num` overrides --num-prompts)."""
    num = args.num_prompts if num is None else num
    if args.dataset_name == "sharegpt":
        if not args.dataset_path:
            raise ValueError("--dataset-name sharegpt needs --dataset-path FILE")
        return sharegpt_requests(
            args.dataset_path, tokenizer, num, args.seed, args.output_len, max_model_len
        )
    requests = random_requests(
        num, input_range(args), output_range(args), len(tokenizer), args.seed
    )
    longest = max(r.prompt_len + r.output_len for r in requests)
    if max_model_len is not None and longest > max_model_len:
        raise ValueError(
            f"a request of {longest} tokens (prompt + output) does not fit "
            f"max_model_len {max_model_len}; shorten --input-len/--output-len"
        )
    return requests
