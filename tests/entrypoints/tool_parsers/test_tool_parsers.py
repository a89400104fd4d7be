"""Each tool parser: one-piece parses against hand-written expectations, streaming against the
one-piece parse for many chunkings, malformed text as content, linear time on adversarial text."""

from __future__ import annotations

import json
import time

import pytest

from pagedllm.entrypoints.openai.tool_parsers import TOOL_PARSERS
from tests.entrypoints.tool_parsers.streaming_helpers import assert_streaming_matches

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"},
            "metric": {"type": "boolean"}, "threshold": {"type": "number"},
            "tags": {"type": "array"}, "opts": {"type": "object"}}}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}}}},
]

CALL1 = ("get_weather", {"city": "Paris \"Île\"\n", "days": 3, "metric": True,
                         "tags": ["a", 1.5, None], "opts": {"x": {"y": []}}})
CALL2 = ("get_time", {"zone": "Europe/Paris 😀"})


def hermes_call(name: str, args: dict, **dumps_kw) -> str:
    body = json.dumps({"name": name, "arguments": args}, **dumps_kw)
    return f"<tool_call>\n{body}\n</tool_call>"


def llama_call(name: str, args: dict, **dumps_kw) -> str:
    return json.dumps({"name": name, "parameters": args}, **dumps_kw)


def pythonic_call(name: str, args: dict) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def qwen3_coder_call(name: str, args: dict) -> str:
    params = "".join(
        f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v)}\n</parameter>\n"
        for k, v in args.items())
    return f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"


# parser name -> (text with one call, with two calls, plain text, text then call)
# The expected result of each: list of (name, args), content.
CASES = {
    "hermes": [
        (hermes_call(*CALL1), [CALL1], None),
        (hermes_call(*CALL1, indent=2) + "\n" + hermes_call(*CALL2, ensure_ascii=False),
         [CALL1, CALL2], None),
        ("The weather is <b>fine</b> < tool_call.", [], "The weather is <b>fine</b> < tool_call."),
        ("Let me check.\n\n" + hermes_call(*CALL2), [CALL2], "Let me check.\n\n"),
    ],
    "llama3_json": [
        (llama_call(*CALL1), [CALL1], None),
        ("<|python_tag|>" + llama_call(*CALL1, indent=1) + "; " + llama_call(*CALL2),
         [CALL1, CALL2], None),
        ("Paris is in {France}.", [], "Paris is in {France}."),
        ("Sure.<|python_tag|>" + llama_call(*CALL2), [CALL2], "Sure."),
    ],
    "pythonic": [
        ("[" + pythonic_call(*CALL1) + "]", [CALL1], None),
        ("[" + pythonic_call(*CALL1) + ",\n " + pythonic_call(*CALL2) + "]", [CALL1, CALL2],
         None),
        ("[1, 2] is a list (of ints).", [], "[1, 2] is a list (of ints)."),
        ("Text first [" + pythonic_call(*CALL2) + "]", [],
         "Text first [" + pythonic_call(*CALL2) + "]"),
    ],
    "mistral": [
        ("[TOOL_CALLS]" + json.dumps([{"name": CALL1[0], "arguments": CALL1[1]}]), [CALL1],
         None),
        ("[TOOL_CALLS]get_weather[ARGS]" + json.dumps(CALL1[1]) + "[TOOL_CALLS]get_time[ARGS]"
         + json.dumps(CALL2[1], ensure_ascii=False), [CALL1, CALL2], None),
        ("Plain [TOOL answer [ARGS].", [], "Plain [TOOL answer [ARGS]."),
        ("I will call.[TOOL_CALLS] [" + json.dumps({"name": CALL2[0], "arguments": CALL2[1]})
         + ", " + json.dumps({"arguments": CALL1[1], "name": CALL1[0]}) + "]",
         [CALL2, CALL1], "I will call."),
    ],
    "qwen3_coder": [
        (qwen3_coder_call(*CALL1), [CALL1], None),
        (qwen3_coder_call(*CALL1) + "\n" + qwen3_coder_call(*CALL2), [CALL1, CALL2], None),
        ("No <function=tools> here.", [], "No <function=tools> here."),
        ("Checking.\n" + qwen3_coder_call(*CALL2), [CALL2], "Checking.\n"),
    ],
}


def _parser(name: str):
    return TOOL_PARSERS.get(name)(None)


@pytest.mark.parametrize("name", sorted(CASES))
def test_extract_tool_calls(name):
    for text, calls, content in CASES[name]:
        result = _parser(name).extract_tool_calls(text, TOOLS)
        assert result.tools_called == bool(calls), text
        assert result.content == content, text
        assert [(c.function.name, json.loads(c.function.arguments))
                for c in result.tool_calls] == calls, text
        for c in result.tool_calls:
            # Arguments are canonical json.dumps text, whatever spacing the model used.
            assert c.function.arguments == json.dumps(json.loads(c.function.arguments),
                                                      ensure_ascii=False)
            assert c.type == "function" and c.id.startswith("chatcmpl-tool-")
        assert len({c.id for c in result.tool_calls}) == len(result.tool_calls)


@pytest.mark.parametrize("name", sorted(CASES))
def test_streaming_matches_whole_parse(name):
    for seed, (text, _, _) in enumerate(CASES[name]):
        assert_streaming_matches(lambda: _parser(name), text, TOOLS, seed=seed)


MALFORMED = {
    "hermes": ['<tool_call>\n{"name": "f", "arguments": {"a": 1}\n</tool_call>',
               '<tool_call>{"arguments": {}}</tool_call>', "<tool_call>{\"name\": \"f\""],
    "llama3_json": ['{"name": "f", "parameters": {"a": }}', '{"answer": 42}',
                    '{"name": "f", "parameters": {}} and then text'],
    "pythonic": ["[f(1)]", "[f(x=open('a'))]", "[f(x=1)", "[f(**k)]", "[f(x={1, 2})]"],
    "mistral": ['[TOOL_CALLS][{"name": "f", "arguments": 3}]', "[TOOL_CALLS]f[ARGS]{oops}",
                "[TOOL_CALLS]" + "x" * 300],
    "qwen3_coder": ["<tool_call>\n<function=f>\n<parameter=a>\n1\n", "<tool_call>\n<oops>"],
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_calls_are_content(name):
    for text in MALFORMED[name]:
        result = _parser(name).extract_tool_calls(text, TOOLS)
        assert not result.tools_called and result.tool_calls == [], text
        assert result.content == text


def test_qwen3_coder_converts_by_schema():
    text = qwen3_coder_call("get_weather", {}).replace("</function>", (
        "<parameter=days>\n 7 \n</parameter>\n<parameter=metric>\nFalse\n</parameter>\n"
        "<parameter=threshold>\n2.5\n</parameter>\n<parameter=city>\n42\n</parameter>\n"
        "<parameter=unknown>\n[1]\n</parameter>\n<parameter=tags>\nnot json\n</parameter>\n"
        "</function>"))
    (call,) = _parser("qwen3_coder").extract_tool_calls(text, TOOLS).tool_calls
    assert json.loads(call.function.arguments) == {
        "days": 7, "metric": False, "threshold": 2.5, "city": "42", "unknown": "[1]",
        "tags": "not json"}


def test_registry_names():
    assert {"hermes", "llama3_json", "pythonic", "mistral", "qwen3_coder"} <= set(
        TOOL_PARSERS.names())


ADVERSARIAL = [
    "<tool_call>" * 20000, "{" * 200000, "[" * 50000, '{"name": "' + "a" * 200000,
    "[TOOL_CALLS]" * 15000, "[f(" + "(" * 100000, "[" + "f(x=1), " * 20000 + "]",
    "<tool_call>\n<function=f>\n<parameter=a>\n" + "x" * 200000,
    '{"name": "f", "parameters": ' + "[" * 60000 + "]" * 60000 + "}",
    "<|python_tag|>" + "{}" * 50000, "<tool_call>" + '{"a":' * 30000,
]


@pytest.mark.parametrize("name", sorted(CASES))
def test_adversarial_inputs_run_in_linear_time(name):
    # the parser's own CPU time: the other processes of a loaded machine (xdist workers, engine
    # subprocesses) stretch the wall clock (pythonic: 1.2 s quiet, over 5 s at load 15)
    start = time.process_time()
    for text in ADVERSARIAL:
        result = _parser(name).extract_tool_calls(text, TOOLS)
        assert isinstance(result.content, (str, type(None)))
        parser = _parser(name)  # streaming in 997-char deltas: no rescans of the whole text
        for end in range(997, len(text) + 997, 997):
            parser.extract_tool_calls_streaming(text[:end - 997], text[:end], "", TOOLS)
    assert time.process_time() - start < 5.0
