"""Feed a text to a tool parser in random chunkings and reassemble what streaming sent."""

from __future__ import annotations

import json
import random
from typing import Any


def random_chunks(text: str, rng: random.Random, max_len: int) -> list[str]:
    chunks, i = [], 0
    while i < len(text):
        j = min(len(text), i + rng.randint(1, max_len))
        chunks.append(text[i:j])
        i = j
    return chunks


def stream(parser: Any, chunks: list[str], tools: list[dict[str, Any]]
           ) -> tuple[str, dict[int, dict[str, str]]]:
    """-> (content, {index: {"id", "name", "arguments"}}) as a client would reassemble them."""
    content, calls, previous = [], {}, ""
    deltas = []
    for chunk in chunks:
        current = previous + chunk
        deltas.append(parser.extract_tool_calls_streaming(previous, current, chunk, tools))
        previous = current
    deltas.append(parser.flush_streaming())
    for delta in deltas:
        if delta is None:
            continue
        content.append(delta.content or "")
        for call in delta.tool_calls:
            entry = calls.get(call.index)
            if entry is None:  # the first fragment of a call carries its id and name
                assert call.id and call.name, call
                entry = calls[call.index] = {"id": call.id, "name": call.name, "arguments": ""}
            else:
                assert call.id is None and call.name is None, call
            entry["arguments"] += call.arguments or ""
    return "".join(content), calls


def assert_streaming_matches(make_parser: Any, text: str, tools: list[dict[str, Any]],
                             seed: int = 0, trials: int = 12) -> None:
    """Streaming, for 1-char and random chunkings, reassembles to the one-piece parse."""
    whole = make_parser().extract_tool_calls(text, tools)
    expected_calls = {i: (c.function.name, c.function.arguments)
                      for i, c in enumerate(whole.tool_calls)}
    rng = random.Random(seed)
    chunkings = [list(text), [text]] + [random_chunks(text, rng, rng.choice([2, 5, 17]))
                                        for _ in range(trials)]
    for chunks in chunkings:
        content, calls = stream(make_parser(), chunks, tools)
        assert content == (whole.content or ""), (chunks, content, whole.content)
        got = {i: (c["name"], c["arguments"]) for i, c in calls.items()}
        assert got == expected_calls, (chunks, got, expected_calls)
        for _, arguments in got.values():
            assert isinstance(json.loads(arguments), dict)
