"""An encoder-decoder model's prompt (BART, T5), split as vLLM does: the prompt (text, token ids
or a TextPrompt/TokensPrompt dict) is the encoder's input, unless it is the explicit form
`{"encoder_prompt": ..., "decoder_prompt": ...}`. The decoder's prompt starts with the model's
decoder_start_token_id (prepended where the given decoder prompt lacks it); with no decoder
prompt it is that one token, as transformers' `generate` starts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pagedllm.config import ModelConfig

ProcessFn = Callable[[Any, bool], Any]
"""InputProcessor._process: (prompt, add_special_tokens) -> ProcessedPrompt."""


def encoder_decoder_prompt(prompt: Any, process: ProcessFn, model_config: ModelConfig) -> Any:
    """A ProcessedPrompt whose prompt_token_ids are the decoder's and encoder_prompt_token_ids
    the encoder's; the prompt text is the encoder's. ValueError for a bad prompt."""
    decoder_prompt = None
    if isinstance(prompt, dict) and ("encoder_prompt" in prompt or "decoder_prompt" in prompt):
        if prompt.get("encoder_prompt") is None:
            raise ValueError("an encoder/decoder prompt dict needs 'encoder_prompt'")
        decoder_prompt = prompt.get("decoder_prompt")
        prompt = prompt["encoder_prompt"]
    encoder = process(prompt, True)
    limit = max_encoder_len(model_config)
    if len(encoder.prompt_token_ids) > limit:
        raise ValueError(f"the encoder prompt is {len(encoder.prompt_token_ids)} tokens long; "
                         f"the model's encoder takes at most {limit}")
    start = decoder_start_token_id(model_config.hf_config)
    decoder_ids = [start]
    if decoder_prompt is not None:
        decoder_ids = list(process(decoder_prompt, False).prompt_token_ids)
        if decoder_ids[0] != start:
            decoder_ids.insert(0, start)
    encoder.encoder_prompt_token_ids = encoder.prompt_token_ids
    encoder.prompt_token_ids = decoder_ids
    return encoder


def decoder_start_token_id(hf_config: Any) -> int:
    start = getattr(hf_config, "decoder_start_token_id", None)
    if start is None:  # T5 starts from its pad token (transformers' _shift_right)
        start = getattr(hf_config, "pad_token_id", None)
    if start is None:
        raise ValueError("the model's config names no decoder_start_token_id")
    return int(start)


def max_encoder_len(model_config: ModelConfig) -> int:
    """Learned positions (BART) bound the encoder's input (max_model_len bounds the decoder's
    tokens); relative ones (T5) do not, and max_model_len bounds it then (the cross-attention
    K/V grow with it)."""
    limit = getattr(model_config.hf_config, "max_position_embeddings", None)
    return model_config.max_model_len if limit is None else limit
