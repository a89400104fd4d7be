"""HF transformers as the reference implementation: greedy fp32 continuation and logits."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch


@functools.lru_cache(maxsize=4)
def load_hf_model(path: str, gguf_file: str | None = None):
    """transformers' fp32 model of a directory, or of a GGUF file in it (the last few cached).
    A real GGUF (SmolLM2, Gemma 3) stays cached for the session, apart from the tiny models that
    pass through: transformers dequantizes it tensor by tensor in Python, seconds each time, and
    several reference tests read the same file (nothing mutates it)."""
    if gguf_file:
        return _load_hf_gguf_model(path, gguf_file)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@functools.lru_cache(maxsize=2)
def _load_hf_gguf_model(path: str, gguf_file: str):
    from transformers import AutoModelForCausalLM

    with _one_gguf_reader_per_file():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                     gguf_file=gguf_file)  # fmt: skip
    return model.eval()


def hf_gguf_tokenizer(gguf_path: str):
    """transformers' own tokenizer of a GGUF file (its converter: the reference for ours),
    reading the file through the process's shared parse."""
    from pagedllm.tokenizer.loader import transformers_gguf_tokenizer

    with _one_gguf_reader_per_file():
        return transformers_gguf_tokenizer(os.path.dirname(gguf_path), os.path.basename(gguf_path))


_GGUF_READERS: dict[tuple[str, str], object] = {}


@contextlib.contextmanager
def _one_gguf_reader_per_file() -> Iterator[None]:
    """transformers parses a GGUF file's metadata twice in from_pretrained (for the config, then
    again with the tensors), and once more to convert its tokenizer, and gguf's reader builds a
    numpy view per vocabulary entry: most of the load for a 262k-token vocabulary (Gemma 3: ~30 s
    a parse at 1 thread under load). Each file is parsed once per process and the parse reused
    (the Gemma 3 files share one xdist worker, tests/scheduling.py): the same read-only
    mapping, so the same values."""
    import gguf

    original = gguf.GGUFReader

    def reader(path, mode: str = "r"):
        key = (os.fspath(path), mode)
        if key not in _GGUF_READERS:
            _GGUF_READERS[key] = original(path, mode)
        return _GGUF_READERS[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


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


@torch.inference_mode()
def hf_beam_search(model, prompt_ids: list[int], beam_width: int, max_new_tokens: int,
                   length_penalty: float, eos_token_ids: list[int] | None) -> list[list[int]]:
    """transformers' beam search, best first: each beam's generated ids up to and including its
    EOS. `early_stopping="never"` is the setting whose results are those of an exhaustive search
    to max_new_tokens (its stopping bound is exact), which is what pagedllm's beam search
    computes; True / False stop on a heuristic and can miss a better hypothesis. eos_token_ids
    None: no EOS at all (ignore_eos)."""
    if eos_token_ids is None:
        # No token is EOS: an id past the vocabulary never matches.
        eos_token_ids = [model.config.vocab_size + 1]
    out = model.generate(
        torch.tensor([prompt_ids]), num_beams=beam_width, num_return_sequences=beam_width,
        max_new_tokens=max_new_tokens, do_sample=False, early_stopping="never",
        length_penalty=length_penalty, eos_token_id=eos_token_ids, pad_token_id=0)
    beams = []
    for row in out.tolist():
        generated = row[len(prompt_ids):]
        ends = [i for i, t in enumerate(generated) if t in eos_token_ids]
        beams.append(generated[: ends[0] + 1] if ends else generated)
    return beams
