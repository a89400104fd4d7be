"""Structured outputs through the engine on a tiny random Llama: every constrained output obeys
its constraint, whatever the batch, preemption or cache state, and unconstrained requests in the
same batch are untouched."""

from __future__ import annotations

import json
import math
import re
import threading

import jsonschema
import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.sampling_params import StructuredOutputsParams
from tests.engine_internals import engine_core, run_to_completion

PHONE = r"[0-9]{3}-[0-9]{4}"
CHOICES = ["alpha", "beta", "gamma delta"]
SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "ok": {"type": "boolean"},
        "kind": {"enum": ["a", "b", "c"]},
        "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2},
    },
    "required": ["id", "ok", "kind", "tags"],
    "additionalProperties": False,
}
PROMPTS = ["The phone number is", "Pick one:", '{"id":', "Once upon a time", "def f(x):",
           "Hello, my name is"]


def constraints() -> list[StructuredOutputsParams | None]:
    return [StructuredOutputsParams(regex=PHONE), StructuredOutputsParams(choice=CHOICES),
            StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True), None, None,
            StructuredOutputsParams(grammar='root ::= "(" [a-c]{1,3} ")"')]


def check(text: str, constraint: StructuredOutputsParams | None) -> None:
    if constraint is None:
        return
    if constraint.kind == "regex":
        assert re.fullmatch(constraint.regex, text), text
    elif constraint.kind == "choice":
        assert text in constraint.choice, text
    elif constraint.kind == "json":
        jsonschema.validate(json.loads(text), constraint.json)
    elif constraint.kind == "grammar":
        assert re.fullmatch(r"\([a-c]{1,3}\)", text), text


def greedy(constraint, max_tokens=48, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, structured_outputs=constraint,
                          **kw)


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(tiny_llama_dir, kv_cache_memory="32MiB")


def test_constrained_outputs_obey_and_free_ones_equal_their_solo_runs(llm):
    cons = constraints()
    outs = llm.generate(PROMPTS, [greedy(c) for c in cons], use_tqdm=False)
    for out, c in zip(outs, cons):
        assert out.outputs[0].finish_reason == "stop" or c is None, out.outputs[0]
        check(out.outputs[0].text, c)
    for i, c in enumerate(cons):
        if c is None:
            solo = llm.generate([PROMPTS[i]], [greedy(None)], use_tqdm=False)[0]
            assert solo.outputs[0].token_ids == outs[i].outputs[0].token_ids


def test_same_tokens_under_preemption_and_prefix_hits(llm, tiny_llama_dir):
    cons = constraints()
    reference = [o.outputs[0].token_ids for o in llm.generate(
        PROMPTS, [greedy(c) for c in cons], use_tqdm=False)]
    again = [o.outputs[0].token_ids for o in llm.generate(  # prefix-cache hits now
        PROMPTS, [greedy(c) for c in cons], use_tqdm=False)]
    assert again == reference
    small = LLM(tiny_llama_dir, num_gpu_blocks_override=8, enable_prefix_caching=False,
                max_model_len=128)
    engine = small.llm_engine
    for i, (prompt, c) in enumerate(zip(PROMPTS, cons)):
        engine.add_request(str(i), prompt, greedy(c))
    finished, preemptions = run_to_completion(engine)
    assert preemptions > 0, "8 blocks of 16 tokens must force preemption"
    assert [finished[i] for i in range(len(PROMPTS))] == reference


def test_sampled_children_each_obey(llm):
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=100,
                            structured_outputs=StructuredOutputsParams(
                                json=SCHEMA, disable_any_whitespace=True))
    out = llm.generate(["Random:"], [params], use_tqdm=False)[0]
    assert len(out.outputs) == 4
    for completion in out.outputs:
        assert completion.finish_reason == "stop", completion
        check(completion.text, params.structured_outputs)


def test_logprobs_are_over_the_allowed_tokens(llm):
    params = greedy(StructuredOutputsParams(regex="[0-9]{4}"), logprobs=12)
    completion = llm.generate(["Digits:"], [params], use_tqdm=False)[0].outputs[0]
    tokenizer = llm.get_tokenizer()
    for entry in completion.logprobs[:4]:
        finite = {t: lp.logprob for t, lp in entry.items() if math.isfinite(lp.logprob)}
        assert all(tokenizer.decode([t]).isdigit() for t in finite), finite
        # the masked distribution: the allowed tokens carry all the probability
        assert math.isclose(sum(math.exp(v) for v in finite.values()), 1.0, rel_tol=1e-4)


def test_stop_strings_and_max_tokens_still_apply(llm):
    out = llm.generate(["x"], [greedy(StructuredOutputsParams(regex="[a-z]{30}"), max_tokens=5)],
                       use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5
    assert re.fullmatch("[a-z]+", out.text)


def test_a_compiling_grammar_does_not_hold_up_the_batch(llm):
    manager = engine_core(llm).structured_output_manager
    release = threading.Event()
    compile_ = manager._compile

    def slow_compile(key):
        release.wait(30)
        return compile_(key)

    manager._compile = slow_compile
    try:
        engine = llm.llm_engine
        # a constraint no earlier test compiled (the cache would answer at once)
        engine.add_request("slow", "Code:", greedy(StructuredOutputsParams(regex="Z[0-9]{2}")))
        engine.add_request("free", "Once upon a time", greedy(None, max_tokens=8))
        finished = {}
        for _ in range(200):
            for out in engine.step():
                if out.finished:
                    finished[out.request_id] = out
            if "free" in finished:
                break
        assert "free" in finished and "slow" not in finished
        release.set()
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    finished[out.request_id] = out
        assert re.fullmatch("Z[0-9]{2}", finished["slow"].outputs[0].text)
    finally:
        release.set()
        manager._compile = compile_


def test_compiled_grammars_are_shared_and_bounded(llm):
    manager = engine_core(llm).structured_output_manager
    key_count = len(manager._cache)
    llm.generate(["a", "b"], [greedy(StructuredOutputsParams(regex="q{3}"))] * 2, use_tqdm=False)
    assert len(manager._cache) == key_count + 1


@pytest.mark.parametrize("compact", [False, True])
def test_json_object_is_an_object(llm, compact):
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=60, n=3,
                            structured_outputs=StructuredOutputsParams(
                                json_object=True, disable_any_whitespace=compact))
    for completion in llm.generate(["JSON:"], [params], use_tqdm=False)[0].outputs:
        text = completion.text
        assert text.startswith("{"), text
        if compact:  # outside strings, only the one space of xgrammar's ", " and ": "
            outside = re.sub(r'"(?:[^"\\]|\\.)*"?', "", text)
            assert not re.search(r"\s", outside.replace(", ", ",").replace(": ", ":")), text
        if completion.finish_reason == "stop":
            assert isinstance(json.loads(text), dict)
