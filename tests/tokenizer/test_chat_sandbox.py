"""The bounded sandbox for request chat templates: renders as transformers does for ordinary
templates, and stops templates that loop, grow or allocate without bound, quickly."""

from __future__ import annotations

import time

import pytest
from jinja2.exceptions import SecurityError

from pagedllm.tokenizer.chat import apply_chat_template, apply_request_chat_template
from pagedllm.tokenizer.chat_sandbox import TemplateLimitError, TemplateLimits, render_bounded

TOOLS_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>"
    "{% endif %}{% for m in messages %}{% if loop.first and m.role == 'system' %}[S]{% endif %}"
    "<{{ m['role'] }}>{{ m.content | trim }}</{{ m.role }}>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}{{ flag | default('') }}"
)
MESSAGES = [{"role": "system", "content": "be brief <&>"},
            {"role": "user", "content": [{"type": "text", "text": "héllo "}]},
            {"role": "assistant", "content": "hi there"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.mark.parametrize("template", [TOOLS_TEMPLATE, None])
@pytest.mark.parametrize("generation, continue_final", [(True, False), (False, False),
                                                        (True, True)])
def test_renders_as_transformers_does(tokenizer, template, generation, continue_final):
    template = template or tokenizer.chat_template
    args = (MESSAGES, template, generation, continue_final, TOOLS, {"flag": "F"})
    assert (apply_request_chat_template(tokenizer, *args)
            == apply_chat_template(tokenizer, *args))


EVIL = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                    "{% endfor %}",
    "repeat": "{{ 'a' * 10**10 }}",
    "list repeat": "{{ ([1] * 100000000) | length }}",
    "doubling": "{% set ns = namespace(s='ab') %}{% for m in messages * 1 %}{% for i in "
                "range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{% endfor %}{{ ns.s }}",
    "plus doubling": "{% set ns = namespace(s=['x']) %}{% for i in range(64) %}"
                     "{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "wide filter": "{{ 'a' | center(1000000000) }}",
    "wide method": "{{ 'a'.ljust(1000000000) }}",
    "power": "{{ 7 ** 100000000 }}",
    "percent": "{{ '%999999999s' % 'a' }}",
    "output": "{% for i in range(90000) %}{{ 'abcdefghijklmnopqrstuvwxyz' }}{% endfor %}",
    "recursion": "{% for m in [[1]] recursive %}{{ loop([m]) }}{% endfor %}",
}


@pytest.mark.parametrize("name", sorted(EVIL))
def test_unbounded_templates_are_stopped_quickly(name):
    start = time.perf_counter()
    with pytest.raises((TemplateLimitError, RecursionError)):
        render_bounded(EVIL[name], {"messages": [{"role": "user", "content": "x"}]})
    assert time.perf_counter() - start < 2.0


def test_limits_are_the_callers():
    small = TemplateLimits(max_output_chars=10, max_steps=5)
    assert render_bounded("{{ 'a' * 10 }}", {}, small) == "a" * 10
    with pytest.raises(TemplateLimitError):
        render_bounded("{{ 'a' * 11 }}", {}, small)
    with pytest.raises(TemplateLimitError):
        render_bounded("{% for i in range(6) %}{% endfor %}", {}, small)


def test_still_a_sandbox():
    with pytest.raises(SecurityError):
        render_bounded("{{ messages.append(1) }}", {"messages": []})
    assert render_bounded("{{ ''.__class__ }}", {}) == ""  # unsafe attributes are undefined
