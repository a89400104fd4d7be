"""HF transformers as the reference implementation: greedy fp32 continuation and logits."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=4)
def load_hf_model(path: str, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    return model.eval()


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation with the KV cache of transformers, no EOS stop (like ignore_eos)."""
    input_ids = torch.tensor([prompt_ids])
    out = model(input_ids=input_ids, use_cache=True)
    past, generated = out.past_key_values, []
    next_id = int(out.logits[0, -1].argmax())
    for _ in range(max_new_tokens - 1):
        generated.append(next_id)
        out = model(input_ids=torch.tensor([[next_id]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        next_id = int(out.logits[0, -1].argmax())
    generated.append(next_id)
    return generated


@torch.inference_mode()
def hf_logits(model, token_ids: list[int]) -> torch.Tensor:
    """[len(token_ids), vocab] float32 logits of one sequence."""
    return model(input_ids=torch.tensor([token_ids])).logits[0].float()
