"""The README's architecture table says what the registry does: every registered architecture
is listed as native, and each listed one resolves as the table says (native, the Transformers
fallback, or not supported)."""

from __future__ import annotations

import os
import re

import pytest

from pagedllm.model_executor.models.registry import (
    CLASSIFIER_MODEL_REGISTRY,
    EMBEDDING_MODEL_REGISTRY,
    MODEL_REGISTRY,
    get_model_class,
)
from pagedllm.model_executor.models.transformers_fallback import TransformersForCausalLM

README = os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")
_ROW = re.compile(r"^\| `(\w+)` \| [^|]+ \| (native|fallback|not supported) \|$")


def _table() -> dict[str, str]:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    block = text.split("<!-- architectures:begin -->")[1].split("<!-- architectures:end -->")[0]
    rows = [line for line in block.strip().splitlines()[2:]]  # after the header and rule
    table = {}
    for line in rows:
        match = _ROW.match(line)
        assert match, f"malformed README architecture row: {line!r}"
        table[match[1]] = match[2]
    return table


def _implementation(architecture: str) -> str:
    try:
        cls = get_model_class(architecture)
    except ValueError:
        return "not supported"
    return "fallback" if cls is TransformersForCausalLM else "native"


def test_every_registered_architecture_is_listed_native():
    native = {arch for arch, how in _table().items() if how == "native"}
    assert native == (set(MODEL_REGISTRY.names()) | set(EMBEDDING_MODEL_REGISTRY.names())
                      | set(CLASSIFIER_MODEL_REGISTRY.names()))


@pytest.mark.parametrize("architecture, implementation", sorted(_table().items()))
def test_listed_implementation_is_the_registry_s(architecture, implementation):
    assert _implementation(architecture) == implementation
