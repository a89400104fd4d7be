"""A lazy name -> factory registry: heavy modules are imported only when their name is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[str, str]] = {}

    def register(self, name: str, module: str, attr: str) -> None:
        self._entries[name] = (module, attr)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; supported: {', '.join(self.names())}"
            )
        module, attr = self._entries[name]
        return getattr(importlib.import_module(module), attr)
