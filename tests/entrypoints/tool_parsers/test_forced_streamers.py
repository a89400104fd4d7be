"""The forced-choice streamers (tool_choice named / required): whole parse, and streaming that
reassembles to it for any chunking."""

from __future__ import annotations

import json

from pagedllm.entrypoints.openai.tool_parsers.forced import (
    NamedToolCallStreamer,
    RequiredToolCallsStreamer,
)
from tests.entrypoints.tool_parsers.streaming_helpers import assert_streaming_matches, stream

ARGS = {"city": "Paris", "days": [1, 2.0, {"deep": "\u00e9\\"}], "ok": False, "none": None}


def test_named_whole_and_streaming():
    for text in (json.dumps(ARGS), json.dumps(ARGS, indent=2), " {} ", '{"a":1e2}'):
        result = NamedToolCallStreamer("get_weather").extract_tool_calls(text, [])
        assert result.tools_called and result.content is None
        (call,) = result.tool_calls
        assert call.function.name == "get_weather"
        assert call.function.arguments == json.dumps(json.loads(text), ensure_ascii=False)
        assert_streaming_matches(lambda: NamedToolCallStreamer("get_weather"), text, [])


def test_named_sends_the_name_before_any_text():
    streamer = NamedToolCallStreamer("f")
    delta = streamer.extract_tool_calls_streaming("", "", "", [])
    assert delta.tool_calls[0].name == "f" and delta.tool_calls[0].id
    assert streamer.extract_tool_calls_streaming("", "", "", []) is None


def test_required_whole_and_streaming():
    calls = [{"name": "get_weather", "parameters": ARGS}, {"name": "get_time", "parameters": {}}]
    for text in (json.dumps(calls), json.dumps(calls[:1], indent=1), json.dumps(calls[::-1])):
        result = RequiredToolCallsStreamer().extract_tool_calls(text, [])
        expected = json.loads(text)
        assert result.tools_called and result.content is None
        assert [(c.function.name, c.function.arguments) for c in result.tool_calls] == [
            (c["name"], json.dumps(c["parameters"], ensure_ascii=False)) for c in expected]
        assert_streaming_matches(RequiredToolCallsStreamer, text, [])


def test_cut_off_text_is_content():
    for streamer, text in ((NamedToolCallStreamer("f"), '{"a": [1, 2'),
                           (RequiredToolCallsStreamer(), '[{"name": "f", "parameters": {}}'),
                           (RequiredToolCallsStreamer(), '[{"parameters": {}}]')):
        result = streamer.extract_tool_calls(text, [])
        assert not result.tools_called and result.content == text


def test_required_streams_name_before_arguments_finish():
    text = json.dumps([{"name": "get_weather", "parameters": ARGS}])
    cut = text.index('"days"')
    content, calls = stream(RequiredToolCallsStreamer(), [text[:cut]], [])
    assert calls[0]["name"] == "get_weather"
    assert calls[0]["arguments"] == '{"city": "Paris", '
