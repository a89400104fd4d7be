"""MarkerReasoningParser: the split of a text into thinking and answer at text markers, shared by
the deepseek_r1, qwen3 and granite parsers.

The split is a pure function of the text, `_spans(text, final)`: the reasoning and content spans
that are certain so far. With final=False it holds back what the next delta could still change (a
possible partial marker at the end, leading whitespace before a possible start marker); the spans
only ever grow as the text grows, so a streaming step sends `spans(current) - spans(previous)` and
the deltas concatenate to the one-piece split for any chunking. Streaming keeps no state: one
instance may serve many requests. At the end of a stream, `flush_streaming(text)` releases what
was held back (at most a marker's length, and only when the text ends in a marker's prefix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pagedllm.reasoning.abstract import ReasoningDelta, ReasoningParser

_WS = " \t\n\r"


@dataclass(frozen=True)
class Spans:
    reasoning: tuple[int, int] = (0, 0)
    content: tuple[int, int] = (0, 0)


def _partial_suffix_len(text: str, start: int, markers: tuple[str, ...]) -> int:
    """The longest suffix of text[start:] that is a proper prefix of one of the markers."""
    longest = min(max(len(m) for m in markers) - 1, len(text) - start)
    for size in range(longest, 0, -1):
        if any(len(m) > size and text.endswith(m[:size]) for m in markers):
            return size
    return 0


def _earliest(text: str, start: int, markers: tuple[str, ...]) -> tuple[int, str]:
    found = [(i, m) for m in markers if (i := text.find(m, start)) >= 0]
    return min(found) if found else (-1, "")


def _new_part(prev: tuple[int, int], cur: tuple[int, int], text: str) -> str:
    start = prev[1] if prev[1] > prev[0] else cur[0]
    return text[start:cur[1]] if cur[1] > start else ""


class MarkerReasoningParser(ReasoningParser):
    start_markers: tuple[str, ...] = ("<think>",)
    end_markers: tuple[str, ...] = ("</think>",)
    start_required = False
    """True: an output that does not open with a start marker is all content (no thinking).
    False: the thinking may begin unmarked (the template opened it in the prompt)."""
    end_window_tokens = 64
    """is_reasoning_end without an end token id decodes this many trailing tokens."""

    def _spans(self, text: str, final: bool) -> Spans:
        n, first = len(text), 0
        while first < n and text[first] in _WS:
            first += 1
        opened = next((m for m in self.start_markers if text.startswith(m, first)), None)
        if opened is not None:
            body = first + len(opened)
        elif not final and any(n - first < len(m) and m.startswith(text[first:])
                               for m in self.start_markers):
            return Spans()  # whitespace so far, or the start of a start marker: wait
        elif self.start_required:
            return Spans(content=(0, n))
        else:
            body = 0
        end, marker = _earliest(text, body, self.end_markers)
        if end >= 0:
            return Spans(reasoning=(body, end), content=(end + len(marker), n))
        held = 0 if final else _partial_suffix_len(text, body, self.end_markers)
        return Spans(reasoning=(body, n - held))

    def extract_reasoning(self, model_output: str) -> tuple[str | None, str | None]:
        spans = self._spans(model_output, final=True)
        reasoning = model_output[spans.reasoning[0]:spans.reasoning[1]]
        content = model_output[spans.content[0]:spans.content[1]]
        return reasoning or None, content or None

    def extract_reasoning_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
    ) -> ReasoningDelta | None:
        return self._delta(self._spans(previous_text, final=False), current_text,
                           self._spans(current_text, final=False))

    def flush_streaming(self, current_text: str) -> ReasoningDelta | None:
        """End of the stream: what extract_reasoning_streaming held back of current_text."""
        return self._delta(self._spans(current_text, final=False), current_text,
                           self._spans(current_text, final=True))

    @staticmethod
    def _delta(prev: Spans, text: str, cur: Spans) -> ReasoningDelta | None:
        reasoning = _new_part(prev.reasoning, cur.reasoning, text)
        content = _new_part(prev.content, cur.content, text)
        if not reasoning and not content:
            return None
        return ReasoningDelta(reasoning=reasoning or None, content=content or None)

    def is_reasoning_end(self, token_ids: Sequence[int]) -> bool:
        """The end marker's token id among token_ids; when the marker is not one token, whether
        the decoded last `end_window_tokens` tokens contain it. NOTE: the window form assumes
        the caller asks after every step until it first says True (as the engine core does),
        so the marker is still in the window when it completes."""
        if self.end_token_id is not None:
            return self.end_token_id in token_ids
        tail = self.tokenizer.decode(list(token_ids[-self.end_window_tokens:]))
        return any(m in tail for m in self.end_markers)
