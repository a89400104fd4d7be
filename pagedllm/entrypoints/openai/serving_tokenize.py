"""/tokenize and /detokenize (vLLM's extra endpoints): the same tokenization the generation
endpoints use, so counts match their usage."""

from __future__ import annotations

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
