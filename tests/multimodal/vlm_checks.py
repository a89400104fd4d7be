"""What the VLM engine tests share: the HF reference model, a prompt's images, and HF's greedy
tokens for the prompt as the engine expanded it (its placeholders repeated per image token)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pagedllm import LLM

HfGreedy = Callable[[str, Any, list[int], list, int], list[int]]
"""(model dir, HF model, expanded prompt ids, images, max tokens) -> HF's greedy tokens."""


def load_hf(model_dir: str, class_name: str) -> Any:
    """transformers' `class_name` (fp32, eval mode) from the tiny model's directory."""
    import transformers

    return getattr(transformers, class_name).from_pretrained(model_dir).eval()


def prompt_images(prompt: dict) -> list:
    images = prompt.get("multi_modal_data", {}).get("image", [])
    return images if isinstance(images, list) else [images]


def expected_tokens(hf_greedy: HfGreedy, model_dir: str, hf: Any, llm: LLM, prompt: dict,
                    max_tokens: int) -> list[int]:
    """HF's greedy tokens for the prompt's ids as the engine's input processor expands them."""
    ids = llm.llm_engine.input_processor.process_prompt(prompt).prompt_token_ids
    return hf_greedy(model_dir, hf, ids, prompt_images(prompt), max_tokens)
