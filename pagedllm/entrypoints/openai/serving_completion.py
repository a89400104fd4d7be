"""/v1/completions: prompts (text, token ids, or lists of either) -> engine -> JSON or SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from pagedllm.entrypoints.openai.errors import BadRequestError, OpenAIError, error_body
from pagedllm.entrypoints.openai.protocol import (
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionStreamResponse,
    UsageInfo,
    random_id,
)
from pagedllm.entrypoints.openai.serving_engine import (
    SSE_DONE,
    OpenAIServing,
    build_sampling_params,
    clamp_logprob,
    serialize_prompt_logprobs,
    sse,
    token_text,
    top_logprobs,
)
from pagedllm.entrypoints.openai.utils import merge_async_iterators
from pagedllm.outputs import CompletionOutput, Logprob, RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams


@dataclass
class _Prompt:
    text: str | None
    """The prompt as the user wrote it (None for token ids: decoded when echoed)."""
    token_ids: list[int]
    params: SamplingParams | None = None


class OpenAIServingCompletion(OpenAIServing):
    async def create_completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncIterator[str]:
        """A response, or an SSE stream when request.stream; every input error is raised (HTTP
        400/404) before anything is sent."""
        model_name = self.models.check_model(request.model)
        _check_unsupported(request)
        prompts = [self._prepare(p, request) for p in self._prompt_list(request)]
        request_id = random_id("cmpl")
        generators = [
            self.generate_for(p.token_ids, request, p.params,  # type: ignore[arg-type]
                              f"{request_id}-{i}", self.models.lora_request(request.model))
            for i, p in enumerate(prompts)
        ]
        merged = merge_async_iterators(*generators)
        if request.stream:
            return self._stream(request, request_id, model_name, prompts, merged)
        return await self._full(request, request_id, model_name, prompts, merged)

    # ---- input --------------------------------------------------------------------------------

    def _prompt_list(self, request: CompletionRequest) -> list[_Prompt]:
        prompt = request.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]  # type: ignore[list-item]
        if not prompt:
            raise BadRequestError("prompt must not be empty", param="prompt")
        prompts = []
        for p in prompt:
            ids = self.tokenize(p, request.add_special_tokens)  # type: ignore[arg-type]
            kept = self.truncate_prompt(ids, request.truncate_prompt_tokens)
            # a cut prompt echoes as what the model saw (its decoded tokens)
            text = p if isinstance(p, str) and len(kept) == len(ids) else None
            prompts.append(_Prompt(text, kept))
        return prompts

    def _prepare(self, prompt: _Prompt, request: CompletionRequest) -> _Prompt:
        max_tokens = self.check_length(len(prompt.token_ids), request.max_tokens, "prompt",
                                       "max_tokens")
        prompt_logprobs = request.prompt_logprobs
        if request.echo and request.logprobs is not None:
            prompt_logprobs = max(prompt_logprobs or 0, request.logprobs)
        kind = RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY
        prompt.params = build_sampling_params(request, max_tokens, request.logprobs, kind,
                                              prompt_logprobs)
        self.validate_request(prompt.token_ids, prompt.params)
        return prompt

    def _echo_text(self, prompt: _Prompt) -> str:
        if prompt.text is not None:
            return prompt.text
        return self.tokenizer.decode(prompt.token_ids)

    # ---- output -------------------------------------------------------------------------------

    async def _full(self, request: CompletionRequest, request_id: str, model_name: str,
                    prompts: list[_Prompt], merged: AsyncIterator) -> CompletionResponse:
        finals: dict[int, RequestOutput] = {}
        async for index, output in merged:
            finals[index] = output
        choices, completion_tokens = [], 0
        for i, prompt in enumerate(prompts):
            output = finals[i]
            for completion in output.outputs:
                completion_tokens += len(completion.token_ids)
                choices.append(self._choice(request, i, prompt, output, completion))
        choices.sort(key=lambda c: c.index)
        num_prompt_tokens = sum(len(p.token_ids) for p in prompts)
        return CompletionResponse(
            id=request_id, model=model_name, choices=choices,
            usage=UsageInfo(prompt_tokens=num_prompt_tokens, completion_tokens=completion_tokens,
                            total_tokens=num_prompt_tokens + completion_tokens),
        )

    def _choice(self, request: CompletionRequest, prompt_index: int, prompt: _Prompt,
                output: RequestOutput, completion: CompletionOutput) -> CompletionResponseChoice:
        text, logprobs = completion.text, None
        if request.logprobs is not None:
            logprobs = CompletionLogProbs()
        if request.echo:
            text = self._echo_text(prompt) + text
            if logprobs is not None:
                self._append_prompt_logprobs(logprobs, prompt, output, request)
        if logprobs is not None:
            self._append_logprobs(logprobs, completion, request)
        return CompletionResponseChoice(
            index=prompt_index * request.n + completion.index, text=text, logprobs=logprobs,
            finish_reason=completion.finish_reason, stop_reason=completion.stop_reason,
            prompt_logprobs=serialize_prompt_logprobs(output.prompt_logprobs)
            if request.prompt_logprobs is not None else None,
        )

    async def _stream(self, request: CompletionRequest, request_id: str, model_name: str,
                      prompts: list[_Prompt], merged: AsyncIterator) -> AsyncIterator[str]:
        options = request.stream_options
        include_usage = bool(options and options.include_usage)
        # vLLM's continuous_usage_stats: every chunk carries the usage so far.
        continuous = include_usage and bool(options and options.continuous_usage_stats)
        echoed: set[int] = set()
        offsets: dict[int, int] = {}
        completion_tokens = 0
        num_prompt_tokens = sum(len(p.token_ids) for p in prompts)
        created = CompletionResponse(model=model_name, choices=[]).created

        def usage() -> UsageInfo:
            return UsageInfo(prompt_tokens=num_prompt_tokens, completion_tokens=completion_tokens,
                             total_tokens=num_prompt_tokens + completion_tokens)

        try:
            async for i, output in merged:
                for completion in output.outputs:
                    completion_tokens += len(completion.token_ids)
                    index = i * request.n + completion.index
                    choice = self._delta_choice(request, index, prompts[i], output, completion,
                                                echoed, offsets)
                    if choice is None:
                        continue
                    chunk = CompletionStreamResponse(id=request_id, created=created,
                                                     model=model_name, choices=[choice],
                                                     usage=usage() if continuous else None)
                    yield _chunk(chunk, continuous)
            if include_usage:
                yield sse(CompletionStreamResponse(id=request_id, created=created,
                                                   model=model_name, choices=[], usage=usage()))
        except OpenAIError as e:
            yield sse(error_body(e.status_code, e.message, e.type, e.param, e.code))
        finally:
            await merged.aclose()  # type: ignore[attr-defined]
        yield SSE_DONE

    def _delta_choice(self, request: CompletionRequest, index: int, prompt: _Prompt,
                      output: RequestOutput, completion: CompletionOutput, echoed: set[int],
                      offsets: dict[int, int]) -> CompletionResponseChoice | None:
        text, logprobs = completion.text, None
        if request.logprobs is not None:
            logprobs = CompletionLogProbs()
        if request.echo and index not in echoed:
            echoed.add(index)
            text = self._echo_text(prompt) + text
            if logprobs is not None:
                self._append_prompt_logprobs(logprobs, prompt, output, request)
        if logprobs is not None:
            self._append_logprobs(logprobs, completion, request, offsets.get(index, 0))
            if logprobs.text_offset:
                offsets[index] = logprobs.text_offset[-1] + len(logprobs.tokens[-1])
        if not text and completion.finish_reason is None and logprobs is None:
            return None  # nothing the client can see yet (e.g. a partial UTF-8 character)
        return CompletionResponseChoice(
            index=index, text=text, logprobs=logprobs, finish_reason=completion.finish_reason,
            stop_reason=completion.stop_reason)

    def _append_prompt_logprobs(self, logprobs: CompletionLogProbs, prompt: _Prompt,
                                output: RequestOutput, request: CompletionRequest) -> None:
        entries = output.prompt_logprobs or [None] * len(prompt.token_ids)
        self._extend_logprobs(logprobs, prompt.token_ids, entries, request, offset=0)

    def _append_logprobs(self, logprobs: CompletionLogProbs, completion: CompletionOutput,
                         request: CompletionRequest, offset: int | None = None) -> None:
        if offset is None:
            offset = (logprobs.text_offset[-1] + len(logprobs.tokens[-1])
                      if logprobs.tokens else 0)
        self._extend_logprobs(
            logprobs, completion.token_ids, completion.logprobs or [], request, offset)

    def _extend_logprobs(self, logprobs: CompletionLogProbs, token_ids: list[int],
                         entries: list[dict[int, Logprob] | None], request: CompletionRequest,
                         offset: int) -> None:
        """Append one row per token; an entry is None where nothing scores the token (the first
        prompt token)."""
        as_ids = request.return_tokens_as_token_ids
        for token_id, entry in zip(token_ids, entries):
            chosen = entry.get(token_id) if entry else None
            text = token_text(token_id, chosen, self.tokenizer, as_ids)
            logprobs.tokens.append(text)
            logprobs.text_offset.append(offset)
            offset += len(text)
            logprobs.token_logprobs.append(
                clamp_logprob(chosen.logprob) if chosen is not None else None)
            logprobs.top_logprobs.append(
                self._top_dict(entry, request.logprobs or 0, as_ids) if entry is not None
                else None)

    def _top_dict(self, entry: dict, k: int, as_ids: bool) -> dict[str, float]:
        return {token_text(t, lp, self.tokenizer, as_ids): clamp_logprob(lp.logprob)
                for t, lp in top_logprobs(entry, k)}


def _check_unsupported(request: CompletionRequest) -> None:
    if request.suffix is not None:
        raise BadRequestError("suffix is not supported", param="suffix")
    if request.best_of is not None and request.best_of != request.n:
        raise BadRequestError(
            f"best_of ({request.best_of}) different from n ({request.n}) is not supported",
            param="best_of")


def _chunk(chunk: CompletionStreamResponse, include_usage: bool) -> str:
    if include_usage:
        return sse(chunk)
    return f"data: {chunk.model_dump_json(exclude={'usage'})}\n\n"
