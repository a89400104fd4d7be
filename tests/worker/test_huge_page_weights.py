"""utils/huge_pages.py: a model's weights moved into one 2 MiB-aligned arena keep their values,
their sharing (tied weights, views among the parameters) and the model's outputs; a storage held
outside the model stays where it is."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pagedllm.utils.huge_pages import HUGE_PAGE, huge_pages_available, move_weights_to_huge_pages

pytestmark = pytest.mark.skipif(not huge_pages_available(), reason="no transparent huge pages")


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, 32)
        self.proj = nn.Linear(32, 48)
        self.head = nn.Linear(32, 64, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("codes", torch.randint(0, 256, (48, 16), dtype=torch.uint8))
        self.register_buffer("half_scales", torch.rand(48, 3).half())
        self.register_buffer("codes_rows", self.codes[8:24])  # a view among the buffers
        # a view of an unlisted tensor (its _base), as kquant_weight.py's codes.reshape
        self.register_buffer("flat", torch.rand(4, 6, 8).reshape(4, -1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        return self.head(x) + self.proj(x).sum(-1, keepdim=True) + self.codes_rows.float().sum()


def test_weights_move_into_one_arena_with_the_same_values_and_outputs() -> None:
    torch.manual_seed(0)
    model = _Tiny().eval()
    ids = torch.tensor([[1, 5, 9, 63]])
    with torch.no_grad():
        before = model(ids)
    values = {name: t.clone() for name, t in model.state_dict(keep_vars=True).items()}
    old = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
           for t in model.state_dict(keep_vars=True).values()}  # fmt: skip

    moved = move_weights_to_huge_pages(model)

    assert moved >= sum(old.values())
    state = model.state_dict(keep_vars=True)
    for name, t in state.items():
        assert torch.equal(t, values[name]), name
        assert t.untyped_storage().data_ptr() not in old, f"{name} did not move"
    arena = {t.untyped_storage().data_ptr() for t in state.values()}
    assert len(arena) == 1, "one storage for every weight"
    # the arena starts on a huge page; every tensor on a cache line
    first = min(t.data_ptr() for t in state.values())
    assert first % HUGE_PAGE == 0
    assert all(t.data_ptr() % 64 == 0 for n, t in state.items() if n != "codes_rows")
    # sharing kept: the tied head is the embedding, the view is rows 8.. of the codes
    assert model.head.weight is model.embed.weight
    assert model.codes_rows.data_ptr() == model.codes.data_ptr() + 8 * 16
    assert model.flat._base.data_ptr() == model.flat.data_ptr(), "the base moved with its view"
    model.codes[8, 0] = 7
    assert model.codes_rows[0, 0] == 7
    with torch.no_grad():
        model.codes[8, 0] = values["codes"][8, 0]
        assert torch.equal(model(ids), before)


def test_a_storage_held_outside_the_model_stays() -> None:
    model = _Tiny()
    outside = model.proj.weight[:4]  # a view the model does not list
    ptr = model.proj.weight.data_ptr()
    move_weights_to_huge_pages(model)
    assert model.proj.weight.data_ptr() == ptr
    assert outside.data_ptr() == ptr
    assert model.embed.weight.data_ptr() != ptr
