"""A bad constraint is the caller's error, named, before it reaches the engine."""

from __future__ import annotations

import pytest

from pagedllm.config import StructuredOutputsConfig
from pagedllm.sampling_params import SamplingParams, StructuredOutputsParams
from pagedllm.structured_output.backend import constraint_key
from pagedllm.structured_output.validation import validate_structured_outputs

CONFIG = StructuredOutputsConfig()


def check(**constraint) -> None:
    validate_structured_outputs(StructuredOutputsParams(**constraint), CONFIG)


@pytest.mark.parametrize("constraint", [
    {"json": {"type": "object", "properties": {"a": {"type": "integer"}}}},
    {"json": '{"type": "array", "items": {"type": "string"}}'},
    {"regex": r"[0-9]{3}-[0-9]{4}"},
    {"choice": ["yes", "no", 'say "maybe"']},
    {"grammar": 'root ::= "a" b\nb ::= [0-9]+'},
    {"json_object": True},
])
def test_valid_constraints_pass(constraint):
    check(**constraint)


@pytest.mark.parametrize("constraint, reason", [
    ({"regex": "[0-9"}, "invalid structured outputs regex"),
    ({"json": {"type": "nope"}}, "invalid structured outputs json"),
    ({"json": "{not json"}, "not valid JSON"),
    ({"json": "[1, 2]"}, "must be a JSON schema object"),
    ({"grammar": 'root ::= "a" | '}, "invalid structured outputs grammar"),
    ({"grammar": 'start ::= "a"'}, "invalid structured outputs grammar"),
    ({"regex": "a" * 10_001}, "limit is 10000"),
    ({"regex": "a+", "whitespace_pattern": r"\s*"}, "whitespace_pattern"),
])
def test_invalid_constraints_name_the_reason(constraint, reason):
    with pytest.raises(ValueError, match=reason) as info:
        check(**constraint)
    # xgrammar's source locations are not the user's business
    assert ".cc:" not in str(info.value)


def test_too_deep_a_schema_is_refused_without_recursion():
    schema: dict = {"type": "string"}
    for _ in range(5000):  # deeper than Python's recursion limit
        schema = {"type": "array", "items": schema}
    with pytest.raises(ValueError, match="nested .* levels deep"):
        check(json=schema)


@pytest.mark.parametrize("constraints", [{}, {"regex": "a", "choice": ["a"]},
                                         {"json": {}, "json_object": True}])
def test_exactly_one_constraint(constraints):
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams(**constraints)


def test_sampling_params_accept_a_dict():
    params = SamplingParams(structured_outputs={"choice": ["a", "b"]})
    assert params.structured_outputs.kind == "choice"


def test_constraint_key_keeps_the_schema_order_and_the_whitespace_option():
    a = constraint_key(StructuredOutputsParams(json={"b": 1, "a": 2}))
    b = constraint_key(StructuredOutputsParams(json='{"b": 1, "a": 2}'))
    assert a == b and a.spec.index('"b"') < a.spec.index('"a"')
    compact = constraint_key(StructuredOutputsParams(json={"b": 1, "a": 2}),
                             disable_any_whitespace=True)
    assert compact != a and not compact.any_whitespace


def test_config_refuses_backends_we_do_not_ship():
    with pytest.raises(ValueError, match="not available"):
        StructuredOutputsConfig.parse('{"backend": "outlines"}')
    with pytest.raises(ValueError, match="unknown structured outputs option"):
        StructuredOutputsConfig.parse({"bakend": "xgrammar"})
    assert StructuredOutputsConfig.parse('{"backend": "xgrammar"}', reasoning_parser="qwen3"
                                         ).reasoning_parser == "qwen3"
