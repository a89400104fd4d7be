"""Reasoning parsers: one-piece splits against hand-written expectations, streaming against the
one-piece split for every chunking, is_reasoning_end with and without a marker token."""

from __future__ import annotations

import random
import time

import pytest

from pagedllm.reasoning import REASONING_PARSERS


class FakeTokenizer:
    """Characters are tokens (ids = code points); `special` strings are single tokens."""

    def __init__(self, special: tuple[str, ...] = ()) -> None:
        self.special = {s: 1_000_000 + i for i, s in enumerate(special)}

    def get_vocab(self) -> dict[str, int]:
        return dict(self.special)

    def encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            hit = next((s for s in self.special if text.startswith(s, i)), None)
            ids.append(self.special[hit] if hit else ord(text[i]))
            i += len(hit) if hit else 1
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        inverse = {v: k for k, v in self.special.items()}
        return "".join(inverse.get(i) or chr(i) for i in ids)


THINK = FakeTokenizer(("<think>", "</think>"))

# name -> [(text, reasoning, content)]
CASES = {
    "deepseek_r1": [
        ("<think>\nLet me add.\n</think>\n\nIt is 4.", "\nLet me add.\n", "\n\nIt is 4."),
        ("Unprompted thought</think>Answer", "Unprompted thought", "Answer"),
        ("Still thinking, cut off <", "Still thinking, cut off <", None),
        ("<think>x</think>", "x", None),
        ("  <think>a</think>b</think>c", "a", "b</think>c"),
        ("", None, None),
    ],
    "qwen3": [
        ("<think>\nHmm.\n</think>\n\nParis.", "\nHmm.\n", "\n\nParis."),
        ("Paris, no thinking. </think> stays", None, "Paris, no thinking. </think> stays"),
        ("\n<think>cut off </thi", "cut off </thi", None),
        ("<thin", None, "<thin"),
        ("<think></think>Just this", None, "Just this"),
    ],
    "granite": [
        ("Here is my thought process:\nsteps\nHere is my response:\nDone.", "\nsteps\n",
         "\nDone."),
        ("Here's my thought process: a Here's my response: b", " a ", " b"),
        ("No markers here. Here is my response: x", None,
         "No markers here. Here is my response: x"),
        ("Here is my thought process: only thinking Here is my resp",
         " only thinking Here is my resp", None),
    ],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_extract_reasoning(name):
    parser = REASONING_PARSERS.get(name)(THINK)
    for text, reasoning, content in CASES[name]:
        assert parser.extract_reasoning(text) == (reasoning, content), text


def _stream(parser, chunks):
    reasoning, content, previous = [], [], ""
    deltas = []
    for chunk in chunks:
        current = previous + chunk
        deltas.append(parser.extract_reasoning_streaming(previous, current, chunk, [], [], []))
        previous = current
    deltas.append(parser.flush_streaming(previous))
    for d in deltas:
        if d is not None:
            assert d.reasoning or d.content  # never an empty delta
            reasoning.append(d.reasoning or "")
            content.append(d.content or "")
    return "".join(reasoning) or None, "".join(content) or None


@pytest.mark.parametrize("name", sorted(CASES))
def test_streaming_matches_whole_split_for_every_chunking(name):
    parser = REASONING_PARSERS.get(name)(THINK)
    rng = random.Random(0)
    for text, reasoning, content in CASES[name]:
        # Every split into two pieces, 1-char deltas, and random chunkings.
        chunkings = [[text[:i], text[i:]] for i in range(len(text) + 1)] + [list(text)]
        for _ in range(30):
            cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8)))
                          ) if len(text) > 1 else []
            chunkings.append([text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])])
        for chunks in chunkings:
            assert _stream(parser, chunks) == (reasoning, content), chunks


def test_streaming_holds_back_only_a_possible_marker():
    parser = REASONING_PARSERS.get("deepseek_r1")(THINK)
    delta = parser.extract_reasoning_streaming("", "abc</th", "abc</th", [], [], [])
    assert delta.reasoning == "abc" and delta.content is None
    delta = parser.extract_reasoning_streaming("abc</th", "abc</think>Hi", "ink>Hi", [], [], [])
    assert delta.reasoning is None and delta.content == "Hi"


@pytest.mark.parametrize("name", ["deepseek_r1", "qwen3"])
def test_is_reasoning_end_by_token_id_or_decoded_text(name):
    for tokenizer in (THINK, FakeTokenizer()):  # "</think>" one token, or eight characters
        parser = REASONING_PARSERS.get(name)(tokenizer)
        ids = tokenizer.encode("<think>abc</think>x")
        end = ids.index(tokenizer.encode("<")[0], 1) if tokenizer is not THINK else 4
        assert not parser.is_reasoning_end(ids[:end])
        assert parser.is_reasoning_end(ids)


def test_granite_is_reasoning_end_decodes():
    tokenizer = FakeTokenizer()
    parser = REASONING_PARSERS.get("granite")(tokenizer)
    text = "Here is my thought process: x" + "y" * 200
    assert not parser.is_reasoning_end(tokenizer.encode(text))
    assert parser.is_reasoning_end(tokenizer.encode(text + "Here is my response:"))


def test_long_streams_stay_fast():
    text = "<think>" + "reasoning " * 20000 + "</think>" + "answer " * 5000
    for name in CASES:
        parser = REASONING_PARSERS.get(name)(THINK)
        start, previous = time.perf_counter(), ""
        for end in range(0, len(text), 500):
            parser.extract_reasoning_streaming(previous, text[:end], "", [], [], [])
            previous = text[:end]
        assert time.perf_counter() - start < 2.0
