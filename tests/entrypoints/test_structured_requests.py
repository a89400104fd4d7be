"""Request fields -> StructuredOutputsParams, and a chat answer -> reasoning / content / tool calls
(whole and streamed), without a server."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import ValidationError

from pagedllm.entrypoints.openai.chat_output import ChoiceStream, OutputOptions, finish_reason
from pagedllm.entrypoints.openai.chat_tools import (
    AUTO_TOOL_CHOICE_ERROR,
    ToolMode,
    ToolSettings,
    tool_mode,
)
from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
from pagedllm.entrypoints.openai.structured_requests import structured_outputs_from_request
from pagedllm.entrypoints.openai.tool_parsers import (
    DeltaToolCall,
    ExtractedToolCalls,
    FunctionCall,
    ToolCall,
    ToolParser,
    ToolStreamDelta,
)
from pagedllm.reasoning import ReasoningDelta, ReasoningParser
from pagedllm.tokenizer.chat import apply_chat_template

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "now"}}
USER = [{"role": "user", "content": "hi"}]


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=USER, **fields)


def completion(**fields) -> CompletionRequest:
    return CompletionRequest(prompt="x", **fields)


# ---- request -> StructuredOutputsParams ----------------------------------------------------------


@pytest.mark.parametrize(("fields", "kind", "value"), [
    ({"response_format": {"type": "json_object"}}, "json_object", True),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}}},
     "json", SCHEMA),
    ({"structured_outputs": {"json": SCHEMA}}, "json", SCHEMA),
    ({"structured_outputs": {"json": json.dumps(SCHEMA)}}, "json", SCHEMA),
    ({"structured_outputs": {"regex": "[0-9]{3}"}}, "regex", "[0-9]{3}"),
    ({"structured_outputs": {"choice": ["a", "b"]}}, "choice", ["a", "b"]),
    ({"structured_outputs": {"grammar": 'root ::= "x"'}}, "grammar", 'root ::= "x"'),
    ({"structured_outputs": {"json_object": True}}, "json_object", True),
    ({"guided_json": SCHEMA}, "json", SCHEMA),
    ({"guided_json": json.dumps(SCHEMA)}, "json", SCHEMA),
    ({"guided_regex": "a+"}, "regex", "a+"),
    ({"guided_choice": ["yes", "no"]}, "choice", ["yes", "no"]),
    ({"guided_grammar": 'root ::= "y"', "guided_decoding_backend": "outlines"}, "grammar",
     'root ::= "y"'),
])
@pytest.mark.parametrize("make", [chat, completion])
def test_each_field_becomes_its_constraint(make, fields, kind, value):
    params = structured_outputs_from_request(make(**fields))
    assert params is not None and params.kind == kind
    assert getattr(params, kind) == value


def test_no_constraint_and_text_format_are_none():
    assert structured_outputs_from_request(chat()) is None
    assert structured_outputs_from_request(chat(response_format={"type": "text"})) is None
    assert structured_outputs_from_request(chat(tools=[WEATHER], tool_choice="auto")) is None


def test_options_pass_through():
    params = structured_outputs_from_request(completion(structured_outputs={
        "regex": "a", "disable_any_whitespace": True, "disable_additional_properties": True,
        "whitespace_pattern": " "}))
    assert params.disable_any_whitespace and params.disable_additional_properties
    assert params.whitespace_pattern == " "
    legacy = structured_outputs_from_request(completion(guided_json=SCHEMA,
                                                        guided_whitespace_pattern="[ ]?"))
    assert legacy.whitespace_pattern == "[ ]?"


@pytest.mark.parametrize(("fields", "names"), [
    ({"guided_regex": "a", "guided_choice": ["b"]}, ["guided_regex", "guided_choice"]),
    ({"response_format": {"type": "json_object"}, "guided_json": SCHEMA},
     ["response_format (json_object)", "guided_json"]),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}},
     ["structured_outputs.regex", "structured_outputs.choice"]),
    ({"structured_outputs": {"regex": "a"}, "tools": [WEATHER], "tool_choice": "required"},
     ["structured_outputs.regex", "tool_choice (required)"]),
    ({"guided_json": SCHEMA, "tools": [WEATHER],
      "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     ["guided_json", "tool_choice (function 'get_weather')"]),
])
def test_two_constraints_name_both(fields, names):
    with pytest.raises(ValueError) as info:
        structured_outputs_from_request(chat(**fields))
    assert all(name in str(info.value) for name in names), str(info.value)


@pytest.mark.parametrize("fields", [
    {"guided_json": "[1, 2]"}, {"guided_json": "not json"}, {"guided_json": "42"},
    {"structured_outputs": {"json": "[]"}}, {"structured_outputs": {}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "n"}}},
])
def test_malformed_constraints_are_value_errors(fields):
    with pytest.raises(ValueError):
        structured_outputs_from_request(completion(**fields))


@pytest.mark.parametrize("fields", [
    {"guided_json": [1, 2]}, {"guided_choice": "a"}, {"structured_outputs": {"jsn": {}}},
    {"response_format": {"type": "xml"}}, {"response_format": {"type": "json_schema"}},
    {"stream": True, "prompt_logprobs": 1},
])
def test_malformed_fields_fail_validation(fields):
    with pytest.raises(ValidationError):
        completion(**fields)


def test_tool_choice_schemas():
    named = structured_outputs_from_request(chat(
        tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}}))
    assert named.json == {"type": "object", "properties": {}}  # a tool without parameters
    required = structured_outputs_from_request(chat(tools=[WEATHER, TIME],
                                                    tool_choice="required")).json
    assert required["type"] == "array" and required["minItems"] == 1 and "maxItems" not in required
    names = [s["properties"]["name"]["enum"] for s in required["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]
    assert required["items"]["anyOf"][0]["properties"]["parameters"] == SCHEMA
    single = structured_outputs_from_request(chat(tools=[WEATHER], tool_choice="required",
                                                  parallel_tool_calls=False)).json
    assert single["maxItems"] == 1


def test_required_schema_accepts_exactly_the_calls():
    jsonschema = pytest.importorskip("jsonschema")
    schema = structured_outputs_from_request(chat(tools=[WEATHER, TIME],
                                                  tool_choice="required")).json
    ok = [{"name": "get_weather", "parameters": {"city": "Paris"}},
          {"name": "get_time", "parameters": {}}]
    jsonschema.validate(ok, schema)
    for bad in ([], [{"name": "nope", "parameters": {}}],
                [{"name": "get_weather", "parameters": {}}], [{"name": "get_time"}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


@pytest.mark.parametrize(("fields", "needle"), [
    ({"tools": []}, "must not be an empty array"),
    ({"tool_choice": "required"}, "`tools` must be set"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "`tools` must be set"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
     "does not match any of the specified `tools`"),
    ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "name"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
     "parameters"),
    ({"tools": [{"type": "function"}]}, "function"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
])
def test_bad_tools_fail_validation(fields, needle):
    with pytest.raises(ValidationError) as info:
        chat(**fields)
    assert needle in str(info.value)


def test_tool_choice_defaults_and_auto_needs_the_flags():
    assert chat().tool_choice == "none"
    assert chat(tools=[WEATHER]).tool_choice == "auto"
    with pytest.raises(ValueError, match="--enable-auto-tool-choice"):
        tool_mode(chat(tools=[WEATHER]), ToolSettings())
    assert AUTO_TOOL_CHOICE_ERROR.startswith('"auto" tool choice requires')
    assert tool_mode(chat(tools=[WEATHER], tool_choice="none"), ToolSettings()).choice == "none"
    assert tool_mode(chat(tools=[WEATHER], tool_choice="required"),
                     ToolSettings()).choice == "required"


def test_messages_with_tool_calls_and_tool_results_validate():
    request = ChatCompletionRequest(messages=[
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ])
    conversation = request.conversation()
    assert conversation[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert conversation[2] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    with pytest.raises(ValidationError, match="tool_call_id"):
        ChatCompletionRequest(messages=[{"role": "tool", "content": "x"}])


def test_template_gets_tools_kwargs_and_argument_dicts(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    template = (
        "{% for t in tools or [] %}T:{{ t.function.name }};{% endfor %}"
        "{% for m in messages %}{{ m.role }}:{{ m.content }}"
        "{% for c in m.tool_calls or [] %}[{{ c.function.name }}"
        "{{ c.function.arguments.city }}]{% endfor %};{% endfor %}"
        "{% if enable_thinking is defined %}think={{ enable_thinking }}{% endif %}")
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}]
    text = apply_chat_template(tokenizer, messages, template, False, False, [WEATHER],
                               {"enable_thinking": False, "tools": "ignored"})
    assert text == "T:get_weather;user:hi;assistant:[get_weatherParis];think=False"
    with pytest.raises(ValueError, match="JSON"):
        bad = [{**messages[1], "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}]
        apply_chat_template(tokenizer, bad, template)


# ---- answer -> tool calls ------------------------------------------------------------------------


CALLS_TEXT = ('[{"name": "get_weather", "parameters": {"city": "Pa\\"ris", "n": [1, {"x": "}"}]}},'
              ' {"parameters" : {}, "name":"get_time"}]')


REQUIRED = ToolMode("required", [WEATHER, TIME])


def test_required_calls_whole():
    calls, content = REQUIRED.extract(CALLS_TEXT, None)
    assert [c.function.name for c in calls] == ["get_weather", "get_time"] and content == ""
    expected = [item["parameters"] for item in json.loads(CALLS_TEXT)]
    assert [json.loads(c.function.arguments) for c in calls] == expected
    assert len({c.id for c in calls}) == 2
    assert REQUIRED.extract(CALLS_TEXT[:-5], None) == ([], CALLS_TEXT[:-5])  # cut: no calls


def reassemble(deltas) -> list[tuple[str, str]]:
    calls: dict[int, list] = {}
    for delta in deltas:
        for piece in delta.tool_calls:
            if piece.name is not None:
                assert piece.index not in calls and piece.id  # the name (and id) come first
                calls[piece.index] = [piece.name, ""]
            if piece.arguments:
                calls[piece.index][1] += piece.arguments
    return [tuple(calls[i]) for i in sorted(calls)]


@pytest.mark.parametrize("seed", range(5))
def test_required_stream_reassembles_to_the_whole_answer(seed):
    rng = random.Random(seed)
    streamer, deltas, i = REQUIRED.new_streamer(None), [], 0
    while i < len(CALLS_TEXT):
        step = rng.randint(1, 6)
        out = streamer.feed(CALLS_TEXT[i:i + step])
        i += step
        if out is not None:
            deltas.append(out)
    whole = [(c.function.name, c.function.arguments) for c in REQUIRED.extract(CALLS_TEXT, None)[0]]
    assert reassemble(deltas) == whole and streamer.tools_called


class FakeReasoning(ReasoningParser):
    """<think>...</think> split by text (the real parsers arrive with the parsers branch)."""

    def extract_reasoning(self, model_output):
        head, sep, tail = model_output.partition("</think>")
        if not sep:
            return head.removeprefix("<think>"), None
        return head.removeprefix("<think>"), tail or None

    def extract_reasoning_streaming(self, previous_text, current_text, delta_text, *ids):
        if "</think>" in previous_text:
            return ReasoningDelta(content=delta_text)
        if "</think>" in current_text:
            reasoning, content = self.extract_reasoning(current_text)
            done = len(self.extract_reasoning(previous_text)[0])
            return ReasoningDelta(reasoning=reasoning[done:] or None, content=content)
        return ReasoningDelta(reasoning=delta_text.replace("<think>", "") or None)


class FakeToolParser(ToolParser):
    """`CALL name {args}` lines."""

    def extract_tool_calls(self, model_output, tools):
        if not model_output.startswith("CALL "):
            return ExtractedToolCalls(False, [], model_output)
        name, _, args = model_output[5:].partition(" ")
        return ExtractedToolCalls(True, [ToolCall(FunctionCall(name, args))], None)

    def extract_tool_calls_streaming(self, previous_text, current_text, delta_text, tools):
        if not current_text.startswith("CALL "[:len(current_text)]):
            return ToolStreamDelta(content=delta_text)
        name, sep, args = current_text[5:].partition(" ")
        if not sep:
            return None
        if not previous_text[5:].partition(" ")[1]:
            return ToolStreamDelta(tool_calls=[DeltaToolCall(0, "id0", name, args)])
        return ToolStreamDelta(tool_calls=[DeltaToolCall(0, arguments=delta_text)])


class Vocab:
    def get_vocab(self):
        return {"</think>": 7}


def stream_message(options: OutputOptions, pieces: list[tuple[str, list[int]]]) -> dict:
    choice, out = ChoiceStream(options, Vocab()), {"reasoning": "", "content": "", "calls": []}
    for text, ids in pieces:
        delta = choice.step(text, ids)
        if delta is None:
            continue
        assert delta.reasoning == delta.reasoning_content
        out["reasoning"] += delta.reasoning or ""
        out["content"] += delta.content or ""
        out["calls"].append(ToolStreamDelta(tool_calls=[
            DeltaToolCall(c.index, c.id, c.function.name, c.function.arguments)
            for c in delta.tool_calls or []]))
    out["calls"] = reassemble(out["calls"])
    out["tools_called"] = choice.tools_called
    return out


def test_reasoning_then_auto_tool_call_whole_and_streamed():
    options = OutputOptions(ToolMode("auto", [WEATHER], parser_cls=FakeToolParser),
                            FakeReasoning(Vocab()))
    text = '<think>hmm, weather</think>CALL get_weather {"city": "Oslo"}'
    message, called = options.message(text, Vocab())
    assert called and message.reasoning == message.reasoning_content == "hmm, weather"
    assert message.content is None
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("get_weather", '{"city": "Oslo"}')]
    pieces = [("<think>", [1]), ("hmm, ", [2]), ("weather", [3]), ("</think>", [7]),
              ("CALL get", [4]), ("_weather {", [5]), ('"city": "Oslo"}', [6])]
    streamed = stream_message(options, pieces)
    assert streamed["reasoning"] == "hmm, weather" and streamed["content"] == ""
    assert streamed["calls"] == [("get_weather", '{"city": "Oslo"}')] and streamed["tools_called"]


def test_plain_text_include_reasoning_false_and_named_choice():
    options = OutputOptions(ToolMode("auto", [WEATHER], parser_cls=FakeToolParser),
                            FakeReasoning(Vocab()), include_reasoning=False)
    message, called = options.message("<think>x</think>Hello there", Vocab())
    assert not called and message.content == "Hello there" and message.reasoning is None
    streamed = stream_message(options, [("<think>x", [1]), ("</think>", [7]), ("Hello", [2]),
                                        (" there", [3])])
    assert streamed == {"reasoning": "", "content": "Hello there", "calls": [],
                        "tools_called": False}
    named = OutputOptions(ToolMode("named", [WEATHER], name="get_weather"), None)
    message, called = named.message('{"city": "Rome"}', Vocab())
    assert called and message.content == "" and message.tool_calls[0].function.arguments == (
        '{"city": "Rome"}')
    streamed = stream_message(named, [('{"city"', [1]), (': "Rome"}', [2])])
    assert streamed["calls"] == [("get_weather", '{"city": "Rome"}')]


def test_finish_reason_with_calls():
    assert finish_reason("stop", True) == "tool_calls"
    assert finish_reason("length", True) == "length"
    assert finish_reason("stop", False) == "stop"
    assert finish_reason(None, True) is None


def test_sampling_params_carry_the_new_fields():
    from pagedllm.entrypoints.openai.serving_engine import build_sampling_params
    from pagedllm.sampling_params import RequestOutputKind

    request = chat(allowed_token_ids=[3, 4], bad_words=["fox jumps"], guided_choice=["a", "b"])
    params = build_sampling_params(request, 8, None, RequestOutputKind.FINAL_ONLY,
                                   thinking_token_budget=5)
    assert params.allowed_token_ids == [3, 4] and params.bad_words == ["fox jumps"]
    assert params.structured_outputs.choice == ["a", "b"] and params.thinking_token_budget == 5
    assert params.max_tokens == 8


class _NoVocab:
    all_special_ids: list[int] = []

    def get_vocab(self) -> dict[str, int]:
        return {}

    def decode(self, token_ids: list[int]) -> str:
        return ""


@pytest.mark.parametrize("ending", ["<tool_c", "<", "</thi", "plain"])
def test_a_stream_that_ends_inside_a_possible_marker_loses_nothing(ending):
    """The parsers hold back text that may start a marker; the last delta flushes it."""
    from pagedllm.entrypoints.openai.tool_parsers import TOOL_PARSERS
    from pagedllm.reasoning import REASONING_PARSERS

    tokenizer = _NoVocab()
    text = "<think>hm</think>Hello " + ending
    mode = ToolMode("auto", [], parser_cls=TOOL_PARSERS.get("hermes"))
    options = OutputOptions(mode, REASONING_PARSERS.get("qwen3")(tokenizer))
    stream = ChoiceStream(options, tokenizer)
    reasoning, content = "", ""
    for i, ch in enumerate(text):
        delta = stream.step(ch, [], final=i == len(text) - 1)
        if delta is not None:
            reasoning += delta.reasoning or ""
            content += delta.content or ""
    whole, _ = options.message(text, tokenizer)
    assert (reasoning, content) == (whole.reasoning, whole.content) == ("hm", "Hello " + ending)
