"""The Responses API's store (`store: true`, `previous_response_id`, `GET /v1/responses/{id}`):
in memory and bounded, the least recently used response dropped first. Off unless the server runs
with --enable-responses-api-store (vLLM keeps it off by default too: it grows with traffic)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass
class StoredResponse:
    response: dict[str, Any]
    """The response object as it was returned."""
    messages: list[dict[str, Any]]
    """The conversation it ended, as chat messages (its instructions excluded, as OpenAI does
    not carry them over), its own output last: what a follow-up's input continues."""


class ResponseStore:
    def __init__(self, max_size: int) -> None:
        assert max_size >= 1
        self.max_size = max_size
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response_id: str, stored: StoredResponse) -> None:
        self._items[response_id] = stored
        self._items.move_to_end(response_id)
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        stored = self._items.get(response_id)
        if stored is not None:
            self._items.move_to_end(response_id)
        return stored
