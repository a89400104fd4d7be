"""PEFT adapters for tests: made with `peft` on a tiny random HF model, with random non-zero B
(PEFT starts B at zero, which would make every adapter the base model), saved with
save_pretrained; and HF's merged fp32 model as the reference."""

from __future__ import annotations

import functools

import torch

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: str, out_dir: str, seed: int, rank: int = 8,
                 targets: list[str] | None = None, alpha: float = 16.0,
                 use_rslora: bool = False, **config_overrides) -> str:
    """Save a PEFT LoRA adapter for the model in base_dir into out_dir; return out_dir."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets or ALL_PROJECTIONS,
                        use_rslora=use_rslora, lora_dropout=0.0, **config_overrides)
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@functools.lru_cache(maxsize=8)
def merged_hf_model(base_dir: str, adapter_dir: str | None):
    """HF's fp32 model with the adapter merged in (PeftModel.merge_and_unload); the base
    model for adapter_dir None."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval()
