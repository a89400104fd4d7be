"""/v1/chat/completions: messages (+ tools) -> chat template -> engine -> JSON or SSE (role,
then reasoning / content / tool-call deltas, a final chunk with finish_reason, then usage when asked
for). The answer's thinking and tool calls are split out in chat_output.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from pagedllm.entrypoints.openai.chat_output import ChoiceStream, OutputOptions, finish_reason
from pagedllm.entrypoints.openai.chat_tools import ToolMode, ToolSettings, tool_mode
from pagedllm.entrypoints.openai.errors import BadRequestError, OpenAIError, error_body
from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionLogProbs,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    ChatLogprobContent,
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
from pagedllm.multimodal.chat_images import expand_prompt, extract_images
from pagedllm.outputs import CompletionOutput, RequestOutput
from pagedllm.reasoning import ReasoningParser
from pagedllm.sampling_params import RequestOutputKind, SamplingParams
from pagedllm.tokenizer.chat import apply_chat_template, apply_request_chat_template


@dataclass
class ChatSettings:
    """The server's chat flags (see cli/serve.py)."""

    chat_template: str | None = None
    """--chat-template FILE's contents; None: the model's own template."""
    tools: ToolSettings = field(default_factory=ToolSettings)
    reasoning_parser: str | None = None
    """--reasoning-parser NAME: thinking goes to the message's `reasoning`."""
    default_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """--default-chat-template-kwargs; a request's chat_template_kwargs win."""
    trust_request_chat_template: bool = False
    """--trust-request-chat-template: a request's own `chat_template` is code the server runs
    (sandboxed, bounded); refused (400) unless the operator opted in, as vLLM does."""


@dataclass
class ChatRun:
    """A started chat request: its engine stream and how to read the answer out of it."""

    request_id: str
    model_name: str
    """The served name the response reports."""
    prompt_ids: list[int]
    stream: AsyncIterator[RequestOutput]
    options: OutputOptions

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)


def chat_request(fields: dict[str, Any]) -> ChatCompletionRequest:
    """A ChatCompletionRequest built from another dialect's request (a 400 naming the first bad
    field if the translation is not a valid chat request)."""
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise BadRequestError(f"{loc}: {message}" if loc else message, param=loc or None) from e


async def final_output(stream: AsyncIterator[RequestOutput]) -> RequestOutput:
    """The last (finished) output of a FINAL_ONLY stream, closing it."""
    final: RequestOutput | None = None
    async with aclosing(stream):  # type: ignore[type-var]
        async for output in stream:
            final = output
    assert final is not None and final.finished
    return final


class OpenAIServingChat(OpenAIServing):
    def __init__(self, engine: Any, models: OpenAIServingModels,
                 settings: ChatSettings | None = None) -> None:
        super().__init__(engine, models)
        self.settings = settings or ChatSettings()
        self.chat_template = self.settings.chat_template
        self.reasoning_parser: ReasoningParser | None = None
        if self.settings.reasoning_parser:
            from pagedllm.reasoning import REASONING_PARSERS

            parser_cls = REASONING_PARSERS.get(self.settings.reasoning_parser)
            self.reasoning_parser = parser_cls(self.tokenizer)

    async def create_chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[str]:
        run = self.start(request, random_id("chatcmpl"))
        if request.stream:
            return self._stream(request, run.request_id, run.model_name, run.num_prompt_tokens,
                                run.stream, run.options)
        return await self._full(request, run.request_id, run.model_name, run.num_prompt_tokens,
                                run.stream, run.options)

    def start(self, request: ChatCompletionRequest, request_id: str,
              prompt_ids: list[int] | None = None) -> ChatRun:
        """Check the request, render its prompt and start generating: what every chat dialect
        (chat completions, Responses, Anthropic messages, Ollama chat) shares. Any 400 is raised
        here, before a response starts. prompt_ids: a prompt already made (Ollama's raw
        generate), used instead of rendering the messages."""
        model_name = self.models.check_model(request.model)
        try:
            mode = tool_mode(request, self.settings.tools)
        except ValueError as e:
            raise BadRequestError(str(e), param="tool_choice") from e
        mm_data = None
        if prompt_ids is None:
            hf_config = self.engine.model_config.hf_config
            try:
                chat = extract_images(request.conversation(), hf_config, self.tokenizer,
                                      self.engine.config.multimodal,
                                      self.engine.model_config.path)
            except ValueError as e:
                raise BadRequestError(str(e), param="messages", code="invalid_image") from e
            prompt_ids = self.render_prompt(
                chat.conversation, request.chat_template, request.add_generation_prompt,
                request.continue_final_message, request.add_special_tokens,
                self.prompt_tools(request), request.chat_template_kwargs)
            if chat.images:
                if request.use_beam_search or request.truncate_prompt_tokens is not None:
                    raise BadRequestError("images cannot be combined with use_beam_search or "
                                          "truncate_prompt_tokens", param="messages")
                prompt_ids = expand_prompt(prompt_ids, hf_config, chat.images,
                                           self.engine.model_config.path)
                mm_data = {"image": chat.images}
            prompt_ids = self.truncate_prompt(prompt_ids, request.truncate_prompt_tokens)
        params = self._sampling_params(request, prompt_ids)
        if self._needs_special_tokens(mode):
            params.skip_special_tokens = False
        options = OutputOptions(mode, self.reasoning_parser, request.include_reasoning)
        stream = self.generate_for(prompt_ids, request, params, request_id,
                                   self.models.lora_request(request.model), mm_data)
        return ChatRun(request_id, model_name, prompt_ids, stream, options)

    def _needs_special_tokens(self, mode: ToolMode) -> bool:
        """The parsers read markers that are special tokens: keep them in the text."""
        reasoning = self.reasoning_parser is not None and self.reasoning_parser.markers_are_special
        tools = mode.parser_cls is not None and mode.parser_cls.needs_special_tokens
        return reasoning or tools

    def prompt_tools(self, request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
        exclude = self.settings.tools.exclude_tools_when_tool_choice_none
        if request.tool_choice == "none" and exclude:
            return None
        return request.tool_dicts()

    def render_prompt(self, conversation: list[dict[str, Any]], chat_template: str | None,
                      add_generation_prompt: bool, continue_final_message: bool,
                      add_special_tokens: bool, tools: list[dict[str, Any]] | None = None,
                      chat_template_kwargs: dict[str, Any] | None = None) -> list[int]:
        """Conversation -> token ids through the chat template (shared with /tokenize)."""
        if chat_template is not None and not self.settings.trust_request_chat_template:
            raise BadRequestError(
                "chat_template was passed with the request, but the server does not run request "
                "templates (start it with --trust-request-chat-template to allow them)",
                param="chat_template", code="untrusted_chat_template")
        kwargs = {**self.settings.default_chat_template_kwargs, **(chat_template_kwargs or {})}
        # A request's own template renders in the bounded sandbox; the server's by transformers.
        render = apply_request_chat_template if chat_template is not None else apply_chat_template
        try:
            text = render(
                self.tokenizer, conversation, chat_template or self.chat_template,
                add_generation_prompt, continue_final_message, tools, kwargs)
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
                                       request.prompt_logprobs,
                                       thinking_token_budget=request.thinking_token_budget)
        self.validate_request(prompt_ids, params)
        return params

    # ---- output -------------------------------------------------------------------------------

    async def _full(self, request: ChatCompletionRequest, request_id: str, model_name: str,
                    num_prompt_tokens: int, stream: AsyncIterator[RequestOutput],
                    options: OutputOptions) -> ChatCompletionResponse:
        final = await final_output(stream)
        choices = []
        for c in final.outputs:
            message, tools_called = options.message(c.text, self.tokenizer)
            choices.append(ChatCompletionResponseChoice(
                index=c.index, message=message, logprobs=self._logprobs(request, c),
                finish_reason=finish_reason(c.finish_reason, tools_called),
                stop_reason=c.stop_reason))
        completion_tokens = sum(len(c.token_ids) for c in final.outputs)
        return ChatCompletionResponse(
            id=request_id, model=model_name, choices=choices,
            usage=UsageInfo(prompt_tokens=num_prompt_tokens, completion_tokens=completion_tokens,
                            total_tokens=num_prompt_tokens + completion_tokens))

    async def _stream(self, request: ChatCompletionRequest, request_id: str, model_name: str,
                      num_prompt_tokens: int, stream: AsyncIterator[RequestOutput],
                      options: OutputOptions) -> AsyncIterator[str]:
        usage_options = request.stream_options
        include_usage = bool(usage_options and usage_options.include_usage)
        continuous = include_usage and bool(usage_options and usage_options.continuous_usage_stats)
        created = ChatCompletionResponse(model=model_name, choices=[], usage=UsageInfo()).created
        completion_tokens = 0

        def usage() -> UsageInfo:
            return UsageInfo(prompt_tokens=num_prompt_tokens, completion_tokens=completion_tokens,
                             total_tokens=num_prompt_tokens + completion_tokens)

        def chunk(choice: ChatCompletionStreamChoice) -> str:
            response = ChatCompletionStreamResponse(
                id=request_id, created=created, model=model_name, choices=[choice],
                usage=usage() if continuous else None)
            return _serialize_chunk(response, continuous)

        choice_streams = {i: ChoiceStream(options, self.tokenizer) for i in range(request.n)}
        try:
            for index in range(request.n):
                yield chunk(ChatCompletionStreamChoice(
                    index=index, delta=DeltaMessage(role="assistant", content="")))
            async with aclosing(stream):  # type: ignore[type-var]
                async for output in stream:
                    for c in output.outputs:
                        completion_tokens += len(c.token_ids)
                        choice = self._delta_choice(request, c, choice_streams[c.index])
                        if choice is not None:
                            yield chunk(choice)
            if include_usage:
                yield sse(ChatCompletionStreamResponse(id=request_id, created=created,
                                                       model=model_name, choices=[],
                                                       usage=usage()))
        except OpenAIError as e:
            yield sse(error_body(e.status_code, e.message, e.type, e.param, e.code))
        yield SSE_DONE

    def _delta_choice(self, request: ChatCompletionRequest, c: CompletionOutput,
                      choice_stream: ChoiceStream) -> ChatCompletionStreamChoice | None:
        delta = choice_stream.step(c.text, c.token_ids, final=c.finish_reason is not None)
        if delta is None and c.finish_reason is None and not request.logprobs:
            return None
        return ChatCompletionStreamChoice(
            index=c.index, delta=delta or DeltaMessage(content=""),
            logprobs=self._logprobs(request, c),
            finish_reason=finish_reason(c.finish_reason, choice_stream.tools_called),
            stop_reason=c.stop_reason)

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
        # Deltas carry only what they have (the role once, then content or tool-call pieces).
        choice["delta"] = _without_none(choice["delta"])
    return sse(data)


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
