"""Tiny Llama / Qwen2 bases with four PEFT adapters each (different ranks, targets, alpha and
rsLoRA), built once per session."""

from __future__ import annotations

import pytest

from pagedllm import LoRARequest
from tests.lora.adapters import make_adapter

ADAPTERS = {
    # name: (seed, make_adapter kwargs)
    "all7": (1, dict(rank=8)),
    "qv": (2, dict(rank=4, alpha=8.0, targets=["q_proj", "v_proj"])),
    "mlp_rslora": (3, dict(rank=16, alpha=4.0, use_rslora=True,
                           targets=["o_proj", "gate_proj", "up_proj", "down_proj"])),
    "ko": (4, dict(rank=2, alpha=2.0, targets=["k_proj", "o_proj"])),
}
BASES = {"llama": ("LlamaConfig", {}), "qwen2": ("Qwen2Config", {})}


@pytest.fixture(scope="session")
def lora_setup(tiny_model_factory, tmp_path_factory):
    """family -> (base dir, {adapter name: LoRARequest})."""
    built: dict[str, tuple[str, dict[str, LoRARequest]]] = {}

    def make(family: str) -> tuple[str, dict[str, LoRARequest]]:
        if family not in built:
            config_cls, overrides = BASES[family]
            base = tiny_model_factory(config_cls, **overrides)
            root = tmp_path_factory.mktemp(f"lora_{family}")
            loras = {}
            for i, (name, (seed, kwargs)) in enumerate(ADAPTERS.items()):
                path = make_adapter(base, str(root / name), seed, **kwargs)
                loras[name] = LoRARequest(name, i + 1, path)
            built[family] = (base, loras)
        return built[family]

    return make
