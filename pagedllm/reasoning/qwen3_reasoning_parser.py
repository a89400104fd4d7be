"""Qwen3: `<think>` reasoning `</think>` answer, the output opening with `<think>`. An output that
does not open with `<think>` is all content: Qwen3 with enable_thinking=false (its template puts
an empty think block in the prompt). Models whose template opens `<think>` in the prompt (the
Qwen3 *-Thinking-2507 releases) should use deepseek_r1."""

from __future__ import annotations

from pagedllm.reasoning.marker_parser import MarkerReasoningParser


class Qwen3ReasoningParser(MarkerReasoningParser):
    start_token = "<think>"
    end_token = "</think>"
    start_markers = ("<think>",)
    end_markers = ("</think>",)
    start_required = True
