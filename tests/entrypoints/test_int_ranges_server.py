"""Every integer field of every request model is range-checked: values past 64 bits (which numpy,
torch and the tokenizers cannot hold), below a field's minimum or far above any sane maximum are
a 400 with an OpenAI-style error naming the field, never a 500. One case per field; a test over
the request models fails when a new integer field has no case here."""

from __future__ import annotations

import inspect
import typing

import httpx
import pytest
from pydantic import BaseModel

pytestmark = pytest.mark.timeout(300)

TOO_BIG = [2**63, -(2**63) - 1, 10**30]
"""Past int64, both ways: every integer field refuses them."""
HUGE = 2**40
"""Fits int64, but no field means anything this large."""

USER = [{"role": "user", "content": "hi"}]
COMPLETION = ("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2})
CHAT = ("/v1/chat/completions", {"model": "tiny", "messages": USER, "max_tokens": 2})
RESPONSES = ("/v1/responses", {"model": "tiny", "input": "hi", "max_output_tokens": 2})
EMBED = ("/v1/embeddings", {"input": "hi"})
SCORE = ("/v1/score", {"text_1": "a", "text_2": "b"})
RERANK = ("/v1/rerank", {"query": "a", "documents": ["b", "c"]})
CLASSIFY = ("/v1/classify", {"input": "hi"})
DETOKENIZE = ("/detokenize", {"model": "tiny", "tokens": [1]})

# field -> (endpoint, how a value goes in, extra values that must be refused)
CASES: dict[str, tuple[tuple[str, dict], str, list]] = {
    "n": (COMPLETION, "scalar", [0, 129]),
    "best_of": (COMPLETION, "scalar", [0, HUGE]),
    "seed": (COMPLETION, "scalar", []),
    "top_k": (COMPLETION, "scalar", [-2, HUGE]),
    "min_tokens": (COMPLETION, "scalar", [-1, HUGE]),
    "max_tokens": (COMPLETION, "scalar", [0, -1, HUGE]),
    "logprobs": (COMPLETION, "scalar", [-1, 21]),
    "prompt_logprobs": (COMPLETION, "scalar", [-1, 21]),
    "truncate_prompt_tokens": (COMPLETION, "scalar", [-2, HUGE]),
    "priority": (COMPLETION, "scalar", []),
    "stop_token_ids": (COMPLETION, "list", [[-1], [HUGE]]),
    "allowed_token_ids": (COMPLETION, "list", [[-1], [HUGE]]),
    "logit_bias": (COMPLETION, "key", [{"-1": 1.0}, {str(HUGE): 1.0}]),
    "prompt": (COMPLETION, "list", [[-1], [HUGE], [[1], [HUGE]]]),
    "top_logprobs": (CHAT, "scalar", [-1, 21]),
    "max_completion_tokens": (CHAT, "scalar", [0, HUGE]),
    "thinking_token_budget": (CHAT, "scalar", [-1, HUGE]),
    "max_output_tokens": (RESPONSES, "scalar", [0, HUGE]),
    "dimensions": (EMBED, "scalar", [0, -1, HUGE]),
    "input": (EMBED, "list", [[-1], [HUGE]]),
    "top_n": (RERANK, "scalar", [-1, HUGE]),
    "tokens": (DETOKENIZE, "list", [[-1], [HUGE]]),
}
ALSO_ON = {  # the same field on other endpoints (the same models' validation, checked anyway)
    "truncate_prompt_tokens": [EMBED, SCORE, RERANK, CLASSIFY, CHAT],
    "top_k": [RESPONSES], "seed": [RESPONSES, CHAT], "max_tokens": [CHAT], "input": [CLASSIFY],
}
NOT_SERVED = {"lora_int_id"}
"""Fields of endpoints the shared servers do not mount (--enable-lora): range-checked the same
way (protocol.py), not reached here."""


def _bodies(field: str) -> list[tuple[str, dict, object]]:
    (path, base), how, extra = CASES[field]
    if how == "scalar":
        values = TOO_BIG + extra
    elif how == "list":
        values = [[v] for v in TOO_BIG] + extra
    else:  # logit_bias: token ids are its keys
        values = [{str(v): 1.0} for v in TOO_BIG] + extra
    endpoints = [(path, base)] + ALSO_ON.get(field, [])
    return [(p, {**b, field: v}, v) for p, b in endpoints for v in values]


def _served_by(path: str, tiny, minilm) -> str:
    return minilm.url if path in ("/v1/embeddings", "/v1/score", "/v1/rerank",
                                  "/v1/classify") else tiny.url


@pytest.mark.parametrize("field", sorted(CASES))
def test_out_of_range_integers_are_400(field, shared_tiny_server, shared_minilm_server):
    failures = []
    for path, body, value in _bodies(field):
        url = _served_by(path, shared_tiny_server, shared_minilm_server)
        response = httpx.post(url + path, json=body, timeout=60)
        error = response.json().get("error") if response.headers.get(
            "content-type", "").startswith("application/json") else None
        if (response.status_code != 400 or not isinstance(error, dict)
                or set(error) != {"message", "type", "param", "code"}
                or error["type"] != "invalid_request_error"):
            failures.append(f"{path} {field}={value!r}: {response.status_code} "
                            f"{response.text[:160]}")
    assert not failures, "\n".join(failures)


DIALECT_CASES = [  # Anthropic's and Ollama's integers (their own error shapes)
    ("/v1/messages", {"model": "tiny", "max_tokens": 2, "messages": USER}, "max_tokens"),
    ("/v1/messages", {"model": "tiny", "max_tokens": 2, "messages": USER}, "top_k"),
    ("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}, "options.num_predict"),
    ("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}, "options.top_k"),
    ("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}, "options.seed"),
    ("/api/chat", {"model": "tiny", "messages": USER, "stream": False}, "options.num_predict"),
    ("/api/embed", {"model": "tiny", "input": "hi"}, "dimensions"),
]


@pytest.mark.parametrize("path, base, field", DIALECT_CASES,
                         ids=[f"{p}:{f}" for p, _, f in DIALECT_CASES])
def test_dialects_refuse_out_of_range_integers(path, base, field, shared_tiny_server):
    failures = []
    for value in TOO_BIG + ([] if field.endswith("seed") else [HUGE, -3]):
        if field.startswith("options."):
            body = {**base, "options": {field.removeprefix("options."): value}}
        else:
            body = {**base, field: value}
        response = httpx.post(shared_tiny_server.url + path, json=body, timeout=60)
        if response.status_code != 400 or "error" not in response.json():
            failures.append(f"{field}={value}: {response.status_code} {response.text[:160]}")
    assert not failures, "\n".join(failures)


def _int_fields(model: type[BaseModel]) -> set[str]:
    fields = set()
    for name, info in model.model_fields.items():
        annotation = str(info.annotation)
        if "int" in annotation and "Literal" not in annotation and "Param" not in annotation \
                and "Options" not in annotation and "Format" not in annotation \
                and "StructuredOutputs" not in annotation:
            fields.add(name)
    return fields


def test_every_integer_request_field_has_a_case():
    from pagedllm.entrypoints.openai import protocol, protocol_responses, protocol_score

    fields: set[str] = set()
    for module in (protocol, protocol_responses, protocol_score):
        for name, cls in vars(module).items():
            if (inspect.isclass(cls) and issubclass(cls, BaseModel)
                    and cls.__module__ == module.__name__ and name.endswith("Request")):
                fields |= _int_fields(cls)
    assert fields, typing.cast(str, "no request models found")
    assert fields - set(CASES) - NOT_SERVED == set()
