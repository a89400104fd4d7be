"""IBM Granite 3.x (`thinking=True`): plain-text markers, no special tokens:
"Here is my thought process:" reasoning "Here is my response:" answer ("Here's" also read, as
vLLM does). An output that does not open with the first marker is all content; one with no
response marker yet is all reasoning.

is_reasoning_end: the markers are several tokens, so it decodes the last few tokens and looks for
the response marker (see MarkerReasoningParser.is_reasoning_end)."""

from __future__ import annotations

from pagedllm.reasoning.marker_parser import MarkerReasoningParser


class GraniteReasoningParser(MarkerReasoningParser):
    start_token = "Here is my thought process:"
    end_token = "Here is my response:"
    start_markers = ("Here is my thought process:", "Here's my thought process:")
    end_markers = ("Here is my response:", "Here's my response:")
    start_required = True
