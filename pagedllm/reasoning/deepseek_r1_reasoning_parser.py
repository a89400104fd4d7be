"""DeepSeek-R1: `<think>` reasoning `</think>` answer. R1's chat template puts `<think>` at the end
of the prompt, so the output may begin thinking without it: text before `</think>` is reasoning,
and an output with no `</think>` (still thinking, or cut off) is all reasoning."""

from __future__ import annotations

from pagedllm.reasoning.marker_parser import MarkerReasoningParser


class DeepSeekR1ReasoningParser(MarkerReasoningParser):
    start_token = "<think>"
    end_token = "</think>"
    start_markers = ("<think>",)
    end_markers = ("</think>",)
    start_required = False
