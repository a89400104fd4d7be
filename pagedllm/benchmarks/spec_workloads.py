"""Built-in prompts for `pagedllm bench speculative` (no downloads): two repetitive tasks, where
the answer copies much of the prompt, and free chat, where it does not."""

from __future__ import annotations

EDIT_TEXT = """\
The harbour town woke slowly. Fishing boats knocked against the pier while gulls argued over \
the night's catch, and the baker on Mill Street pulled the first loaves from his oven just as \
the church bell rang six. Mrs. Alder opend the shutters of her shop, swept the step, and set \
out the crates of apples that had come down from the hill farms the evening before. By seven \
the square was full: farmers with carts, children late for school, a postman who stoped at \
every door to talk about the wether. Nobody noticed the stranger at the fountain, who sat \
with a leather case on his knees and watched the clock on the town hall as if he were waiting \
for it to do something unusual."""
"""(with three misspellings for the edit task to fix)"""

CODE_FILE = '''\
import json
from dataclasses import dataclass, field


@dataclass
class Inventory:
    """Items in stock, by name, with their unit price and quantity."""

    prices: dict[str, float] = field(default_factory=dict)
    quantities: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, price: float, quantity: int = 1) -> None:
        if quantity < 0:
            raise ValueError("quantity must be >= 0")
        self.prices[name] = price
        self.quantities[name] = self.quantities.get(name, 0) + quantity

    def remove(self, name: str, quantity: int = 1) -> None:
        held = self.quantities.get(name, 0)
        if quantity > held:
            raise ValueError(f"only {held} {name} in stock")
        self.quantities[name] = held - quantity

    def value(self) -> float:
        return sum(self.prices[name] * count for name, count in self.quantities.items())

    def to_json(self) -> str:
        return json.dumps({"prices": self.prices, "quantities": self.quantities}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Inventory":
        data = json.loads(text)
        return cls(prices=data["prices"], quantities=data["quantities"])
'''

WORKLOADS: dict[str, list[str]] = {
    "edit": [
        "Fix the spelling mistakes in the following text and return the whole corrected "
        "text, changing nothing else:\n\n" + EDIT_TEXT,
    ],
    "code": [
        "Here is a Python module:\n\n```python\n" + CODE_FILE + "```\n\nAdd a method "
        "`names(self) -> list[str]` that returns the item names in sorted order, and show "
        "the whole module with the new method.",
    ],
    "chat": [
        "Write a short story about a dragon who learns to cook.",
        "What are three good habits for staying healthy? Explain each briefly.",
    ],
}
REPETITIVE = ("edit", "code")
