"""The layout's import rules (DESIGN.md): core/ never imports torch; entrypoints/ never imports
core/, worker/ or model code; models never import engine/ or core/, nor kernels, attention
backends or quantized layouts (execution strategies are the worker's)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pagedllm"

RULES = {
    "core": ("torch", "pagedllm.worker", "pagedllm.model_executor", "pagedllm.attention",
             "pagedllm.sample", "pagedllm.entrypoints", "pagedllm.engine"),
    "entrypoints": ("pagedllm.core", "pagedllm.worker", "pagedllm.model_executor.models",
                    "pagedllm.model_executor.layers", "pagedllm.attention"),
    "model_executor/models": ("pagedllm.engine", "pagedllm.core", "pagedllm.worker",
                              "pagedllm.entrypoints", "pagedllm.kernels",
                              "pagedllm.attention.backends",
                              "pagedllm.model_executor.quantization"),
    "model_executor/layers": ("pagedllm.engine", "pagedllm.core", "pagedllm.worker",
                              "pagedllm.entrypoints"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("subdir", sorted(RULES))
def test_layer_imports(subdir):
    forbidden = RULES[subdir]
    violations = []
    for path in sorted((PACKAGE / subdir).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                violations.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not violations, "\n".join(violations)
