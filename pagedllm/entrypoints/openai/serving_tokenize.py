"""/tokenize, /detokenize and /tokenizer_info (vLLM's extra endpoints): the same tokenization the
generation endpoints use, so counts match their usage; and the tokenizer's configuration, so
clients such as lm-eval's remote tokenizer can work without a local copy of it."""

from __future__ import annotations

import json
from typing import Any

from pagedllm.entrypoints.openai.errors import BadRequestError
from pagedllm.entrypoints.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeRequest,
    TokenizeResponse,
)
from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagedllm.entrypoints.openai.serving_engine import OpenAIServing


class OpenAIServingTokenization(OpenAIServing):
    def __init__(self, chat: OpenAIServingChat) -> None:
        super().__init__(chat.engine, chat.models)
        self.chat = chat

    def create_tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        self.models.check_model(request.model)
        if isinstance(request, TokenizeChatRequest):
            ids = self.chat.render_prompt(request.conversation(), request.chat_template,
                                          request.add_generation_prompt,
                                          request.continue_final_message,
                                          request.add_special_tokens, request.tool_dicts(),
                                          request.chat_template_kwargs)
        else:
            ids = self.tokenize(request.prompt, request.add_special_tokens)
        token_strs = None
        if request.return_token_strs:
            token_strs = [self.tokenizer.decode([t]) for t in ids]
        return TokenizeResponse(count=len(ids), max_model_len=self.max_model_len, tokens=ids,
                                token_strs=token_strs)

    def create_detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        self.models.check_model(request.model)
        vocab = self.engine.model_config.vocab_size
        bad = [t for t in request.tokens if not 0 <= t < vocab]
        if bad:
            raise BadRequestError(f"token id {bad[0]} is outside the vocabulary [0, {vocab})",
                                  param="tokens")
        return DetokenizeResponse(prompt=self.tokenizer.decode(request.tokens))

    def tokenizer_info(self) -> dict[str, Any]:
        """vLLM's /tokenizer_info: tokenizer_config.json's fields as the loaded tokenizer has
        them (special tokens as text), its class, and the chat template the server applies."""
        tokenizer = self.tokenizer
        info: dict[str, Any] = {}
        for key, value in getattr(tokenizer, "init_kwargs", {}).items():
            # Local paths say nothing to a remote client (and where the server keeps files).
            if key.endswith("_file") or key in ("name_or_path", "tokenizer_object"):
                continue
            value = _jsonable(value)
            if value is not None:
                info[key] = value
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            info[name] = getattr(tokenizer, name, None)
        template = self.chat.chat_template or getattr(tokenizer, "chat_template", None)
        info.update(tokenizer_class=type(tokenizer).__name__, chat_template=template,
                    model_max_length=self.max_model_len)
        return info


def _jsonable(value: Any) -> Any:
    """A JSON value, an added token's text, or None for what cannot be sent."""
    content = getattr(value, "content", None)
    if isinstance(content, str):  # tokenizers.AddedToken
        return content
    if isinstance(value, dict):
        return {str(k): v for k, v in ((k, _jsonable(v)) for k, v in value.items())
                if v is not None}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value
