"""A bounded sandbox for chat templates that come with a request (`--trust-request-chat-template`).

transformers already renders templates in jinja2's ImmutableSandboxedEnvironment (no attribute
escapes, no mutation of the caller's data), but nothing there bounds work or memory: a template
can loop 100 000 x 100 000 times or build `'a' * 10**10`. A request's template is code a client
sends, so it renders here instead, in the same kind of sandbox plus:

- a budget of loop iterations and calls per render (every `for` iterable is wrapped, every call
  counted: nested loops and recursive `loop()` stop at the budget);
- no value larger than the output bound: `*`, `+`, `~` results are measured, `**` exponents are
  capped, and no integer argument larger than the bound reaches a filter or a call (`center`,
  `ljust`, `range`... cannot allocate first and be measured after);
- the rendered text is bounded too (it streams out of `generate()` and stops at the bound).

The model's own template and `--chat-template` stay on transformers' path (the operator chose
them). Variables follow transformers: messages, tools, add_generation_prompt, the tokenizer's
special tokens (bos_token, eos_token...), the request's chat_template_kwargs, and the helpers
raise_exception, strftime_now and an unescaped tojson.
"""

from __future__ import annotations

import contextvars
import functools
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

_LOOP = "__pagedllm_loop"
_SIZED = "__pagedllm_sized"
_MAX_EXPONENT = 256


@dataclass(frozen=True)
class TemplateLimits:
    max_output_chars: int = 1 << 20
    """Longest rendered prompt, and longest string or list the template may build."""
    max_steps: int = 100_000
    """Loop iterations plus calls per render."""


class TemplateLimitError(ValueError):
    """The template went past a limit (a 400 for the request that sent it)."""


@dataclass
class _Budget:
    limits: TemplateLimits
    steps: int = 0

    def step(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > self.limits.max_steps:
            raise TemplateLimitError(
                f"the chat template ran more than {self.limits.max_steps} loop iterations and "
                "calls; it was stopped")

    def check_size(self, value: Any) -> Any:
        limit = self.limits.max_output_chars
        if isinstance(value, (str, list, tuple, dict)) and len(value) > limit:
            raise TemplateLimitError(
                f"the chat template built a value longer than {self.limits.max_output_chars}; it "
                "was stopped")
        return value

    def check_args(self, args: tuple, kwargs: dict) -> None:
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and abs(value) > self.limits.max_output_chars:
                raise TemplateLimitError(
                    f"the chat template passed {value} to a function (larger than "
                    f"{self.limits.max_output_chars}); it was stopped")


_budget: contextvars.ContextVar[_Budget] = contextvars.ContextVar("chat_template_budget")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        budget = _budget.get()
        if op == "**" and isinstance(right, (int, float)) and abs(right) > _MAX_EXPONENT:
            raise TemplateLimitError(f"the chat template raised to the power {right}; stopped")
        if op == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    if len(seq) * times > budget.limits.max_output_chars:
                        raise TemplateLimitError(
                            "the chat template repeated a value past "
                            f"{budget.limits.max_output_chars}; it was stopped")
        if op == "%" and isinstance(left, str):
            raise TemplateLimitError("%-formatting of strings is not allowed in a request's "
                                     "chat template")
        return budget.check_size(super().call_binop(context, op, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _budget.get()
        budget.step()
        budget.check_args(args, kwargs)
        return budget.check_size(super().call(__context, __obj, *args, **kwargs))


class _BoundLoops(NodeTransformer):
    """Wrap each `for` iterable and each `~` concatenation in the budget's checks."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 - jinja's visitor names
        self.generic_visit(node)
        node.iter = _call(_LOOP, node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return _call(_SIZED, node)


def _call(name: str, arg: nodes.Expr) -> nodes.Call:
    call = nodes.Call(nodes.Name(name, "load"), [arg], [], None, None)
    return call.set_lineno(arg.lineno)


def _bounded_iter(iterable: Any) -> Any:
    budget = _budget.get()
    for item in iterable:
        budget.step()
        yield item


def _sized(value: Any) -> Any:
    return _budget.get().check_size(value)


def _guard_filter(function: Any) -> Any:
    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget.get()
        budget.step()
        budget.check_args(args, kwargs)
        return budget.check_size(function(*args, **kwargs))

    return guarded


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    # jinja's own tojson escapes HTML characters, which no chat template wants
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@functools.cache
def _environment() -> _BoundedEnvironment:
    env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.filters.pop("format", None)  # %-formatting by another name
    env.filters = {name: _guard_filter(f) for name, f in env.filters.items()}
    env.globals.update({_LOOP: _bounded_iter, _SIZED: _sized,
                        "raise_exception": _raise_exception,
                        "strftime_now": lambda fmt: datetime.now().strftime(fmt)})
    return env


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    env = _environment()
    tree = _BoundLoops().visit(env.parse(source))
    tree.set_environment(env)
    return env.from_string(tree)


def render_bounded(source: str, variables: dict[str, Any],
                   limits: TemplateLimits = TemplateLimits()) -> str:
    """Render `source` with `variables` inside the limits; TemplateLimitError past them, a
    jinja TemplateError for a broken template."""
    token = _budget.set(_Budget(limits))
    try:
        template = _compile(source)
        parts, size = [], 0
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > limits.max_output_chars:
                raise TemplateLimitError(
                    f"the chat template rendered more than {limits.max_output_chars} characters; "
                    "it was stopped")
            parts.append(chunk)
        return "".join(parts)
    finally:
        _budget.reset(token)


def render_request_template(tokenizer: Any, messages: list[dict[str, Any]], source: str,
                            add_generation_prompt: bool, continue_final_message: bool,
                            tools: list[dict[str, Any]] | None,
                            kwargs: dict[str, Any], limits: TemplateLimits = TemplateLimits(),
                            ) -> str:
    """A request's chat template over already normalized messages, as transformers would render
    it (special tokens and kwargs as variables, continue_final_message trims after the last
    message's content)."""
    special = {k: v for k, v in getattr(tokenizer, "special_tokens_map", {}).items()
               if isinstance(v, str)}
    variables = {**special, **kwargs, "messages": messages, "tools": tools,
                 "add_generation_prompt": add_generation_prompt and not continue_final_message}
    text = render_bounded(source, variables, limits)
    if continue_final_message and messages:
        final = str(messages[-1].get("content") or "")
        end = text.rfind(final.strip()) if final.strip() else -1
        if end < 0:
            raise ValueError("continue_final_message: the template does not write the final "
                             "message's content")
        text = text[:end + len(final.strip())]
    return text
