"""/v1/chat/completions: messages -> chat template -> engine -> JSON or SSE (role, content deltas,
a final chunk with finish_reason, then usage when asked for)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from pagedllm.entrypoints.openai.errors import BadRequestError, OpenAIError, error_body
from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionLogProbs,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    ChatLogprobContent,
    ChatMessage,
    ChatTopLogprob,
    DeltaMessage,
    UsageInfo,
    random_id,
)
from pagedllm.entrypoints.openai.serving_engine import (
    SSE_DONE,
    OpenAIServing,
    build_sampling_params,
    clamp_logprob,
    sse,
    token_text,
    top_logprobs,
)
from pagedllm.entrypoints.openai.serving_models import OpenAIServingModels
from pagedllm.outputs import CompletionOutput, RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams
from pagedllm.tokenizer.chat import apply_chat_template


class OpenAIServingChat(OpenAIServing):
    def __init__(self, engine: Any, models: OpenAIServingModels,
                 chat_template: str | None = None) -> None:
        super().__init__(engine, models)
        self.chat_template = chat_template
        """--chat-template FILE's contents; None: the model's own template."""

    async def create_chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[str]:
        model_name = self.models.check_model(request.model)
        prompt_ids = self.render_prompt(request.conversation(), request.chat_template,
                                        request.add_generation_prompt,
                                        request.continue_final_message,
                                        request.add_special_tokens)
        params = self._sampling_params(request, prompt_ids)
        request_id = random_id("chatcmpl")
        stream = self.generate(prompt_ids, params, request_id)
        if request.stream:
            return self._stream(request, request_id, model_name, len(prompt_ids), stream)
        return await self._full(request, request_id, model_name, len(prompt_ids), stream)

    def render_prompt(self, conversation: list[dict[str, Any]], chat_template: str | None,
                      add_generation_prompt: bool, continue_final_message: bool,
                      add_special_tokens: bool) -> list[int]:
        """Conversation -> token ids through the chat template (shared with /tokenize)."""
        try:
            text = apply_chat_template(
                self.tokenizer, conversation, chat_template or self.chat_template,
                add_generation_prompt, continue_final_message)
        except ValueError as e:
            raise BadRequestError(str(e), param="messages") from e
        except Exception as e:  # jinja errors in a user's template
            raise BadRequestError(f"cannot apply the chat template: {e}",
                                  param="messages") from e
        return self.tokenize(text, add_special_tokens)

    def _sampling_params(self, request: ChatCompletionRequest,
                         prompt_ids: list[int]) -> SamplingParams:
        requested = request.max_completion_tokens or request.max_tokens
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        max_tokens = self.check_length(len(prompt_ids), requested, "messages", param)
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        kind = RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY
        params = build_sampling_params(request, max_tokens, logprobs, kind,
                                       request.prompt_logprobs)
        self.validate_request(prompt_ids, params)
        return params

    # ---- output -------------------------------------------------------------------------------

    async def _full(self, request: ChatCompletionRequest, request_id: str, model_name: str,
                    num_prompt_tokens: int, stream: AsyncIterator[RequestOutput]
                    ) -> ChatCompletionResponse:
        final: RequestOutput | None = None
        async with aclosing(stream):  # type: ignore[type-var]
            async for output in stream:
                final = output
        assert final is not None and final.finished
        choices = [
            ChatCompletionResponseChoice(
                index=c.index, message=ChatMessage(role="assistant", content=c.text),
                logprobs=self._logprobs(request, c), finish_reason=c.finish_reason,
                stop_reason=c.stop_reason)
            for c in final.outputs
        ]
        completion_tokens = sum(len(c.token_ids) for c in final.outputs)
        return ChatCompletionResponse(
            id=request_id, model=model_name, choices=choices,
            usage=UsageInfo(prompt_tokens=num_prompt_tokens, completion_tokens=completion_tokens,
                            total_tokens=num_prompt_tokens + completion_tokens))

    async def _stream(self, request: ChatCompletionRequest, request_id: str, model_name: str,
                      num_prompt_tokens: int, stream: AsyncIterator[RequestOutput]
                      ) -> AsyncIterator[str]:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        created = ChatCompletionResponse(model=model_name, choices=[], usage=UsageInfo()).created

        def chunk(choice: ChatCompletionStreamChoice) -> str:
            response = ChatCompletionStreamResponse(id=request_id, created=created,
                                                    model=model_name, choices=[choice])
            return _serialize_chunk(response, include_usage)

        completion_tokens = 0
        try:
            for index in range(request.n):
                yield chunk(ChatCompletionStreamChoice(
                    index=index, delta=DeltaMessage(role="assistant", content="")))
            async with aclosing(stream):  # type: ignore[type-var]
                async for output in stream:
                    for c in output.outputs:
                        completion_tokens += len(c.token_ids)
                        if c.text or c.finish_reason is not None or request.logprobs:
                            yield chunk(ChatCompletionStreamChoice(
                                index=c.index, delta=DeltaMessage(content=c.text),
                                logprobs=self._logprobs(request, c),
                                finish_reason=c.finish_reason, stop_reason=c.stop_reason))
            if include_usage:
                usage = UsageInfo(prompt_tokens=num_prompt_tokens,
                                  completion_tokens=completion_tokens,
                                  total_tokens=num_prompt_tokens + completion_tokens)
                yield sse(ChatCompletionStreamResponse(id=request_id, created=created,
                                                       model=model_name, choices=[],
                                                       usage=usage))
        except OpenAIError as e:
            yield sse(error_body(e.status_code, e.message, e.type, e.param, e.code))
        yield SSE_DONE

    def _logprobs(self, request: ChatCompletionRequest,
                  completion: CompletionOutput) -> ChatCompletionLogProbs | None:
        if not request.logprobs:
            return None
        k, as_ids = request.top_logprobs or 0, request.return_tokens_as_token_ids
        content = []
        for token_id, entry in zip(completion.token_ids, completion.logprobs or []):
            chosen = entry.get(token_id)
            text = token_text(token_id, chosen, self.tokenizer, as_ids)
            content.append(ChatLogprobContent(
                token=text, logprob=clamp_logprob(chosen.logprob) if chosen else -9999.0,
                bytes=list(text.encode("utf-8")),
                top_logprobs=[
                    ChatTopLogprob(token=(t := token_text(tid, lp, self.tokenizer, as_ids)),
                                   logprob=clamp_logprob(lp.logprob),
                                   bytes=list(t.encode("utf-8")))
                    for tid, lp in top_logprobs(entry, k)
                ]))
        return ChatCompletionLogProbs(content=content)


def _serialize_chunk(response: ChatCompletionStreamResponse, include_usage: bool) -> str:
    data = response.model_dump(exclude=None if include_usage else {"usage"})
    for choice in data["choices"]:
        # Deltas carry only what they have (the role once, then content).
        choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return sse(data)
