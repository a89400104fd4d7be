"""Reasoning models: the thinking is not constrained, the answer after `</think>` is, and a
thinking token budget ends the thinking by forcing `</think>` (tiny random Llama whose tokenizer
has the markers as single tokens, DeepSeek-R1's parser)."""

from __future__ import annotations

import re

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.sampling_params import StructuredOutputsParams

DIGITS = StructuredOutputsParams(regex="[0-9]{3}")


@pytest.fixture(scope="module")
def llm(tiny_thinking_llama_dir):
    return LLM(tiny_thinking_llama_dir, kv_cache_memory="32MiB", reasoning_parser="deepseek_r1")


def token_ids(llm, prompt, **params) -> list[int]:
    out = llm.generate([prompt], [SamplingParams(temperature=0, **params)], use_tqdm=False)
    return list(out[0].outputs[0].token_ids)


def end_id(llm) -> int:
    return llm.get_tokenizer().convert_tokens_to_ids("</think>")


@pytest.mark.parametrize("budget", [0, 1, 5])
def test_budget_forces_the_end_then_the_grammar_shapes_the_answer(llm, budget):
    prompt = "Question: what is it? <think>"
    free = token_ids(llm, prompt, max_tokens=12)
    assert end_id(llm) not in free[:budget], "pick a prompt whose free thinking runs longer"
    got = token_ids(llm, prompt, max_tokens=30, thinking_token_budget=budget,
                    structured_outputs=DIGITS)
    # the thinking is the free continuation, unconstrained, up to the budget
    assert got[:budget] == free[:budget]
    assert got[budget] == end_id(llm)
    answer = llm.get_tokenizer().decode(got[budget + 1:], skip_special_tokens=True)
    assert re.fullmatch("[0-9]{3}", answer), answer


def test_without_a_budget_the_thinking_is_free(llm):
    prompt = "Question: what is it? <think>"
    free = token_ids(llm, prompt, max_tokens=16)
    assert end_id(llm) not in free
    assert token_ids(llm, prompt, max_tokens=16, structured_outputs=DIGITS) == free


def test_thinking_closed_in_the_prompt_constrains_from_the_first_token(llm):
    # e.g. a template with enable_thinking=False writes an empty think block
    got = token_ids(llm, "Question: what is it? <think></think>", max_tokens=10,
                    structured_outputs=DIGITS)
    assert re.fullmatch("[0-9]{3}", llm.get_tokenizer().decode(got, skip_special_tokens=True))


def test_enable_in_reasoning_constrains_the_thinking_too(tiny_thinking_llama_dir):
    llm = LLM(tiny_thinking_llama_dir, kv_cache_memory="32MiB", reasoning_parser="deepseek_r1",
              structured_outputs_config={"enable_in_reasoning": True})
    got = token_ids(llm, "Question: what is it? <think>", max_tokens=10,
                    structured_outputs=DIGITS)
    assert re.fullmatch("[0-9]{3}", llm.get_tokenizer().decode(got, skip_special_tokens=True))


def test_a_budget_needs_a_reasoning_parser(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, kv_cache_memory="32MiB")
    with pytest.raises(ValueError, match="--reasoning-parser"):
        llm.generate(["x"], [SamplingParams(thinking_token_budget=3)], use_tqdm=False)
