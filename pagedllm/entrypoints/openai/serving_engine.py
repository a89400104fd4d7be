"""What completions and chat share: tokenizing and length checks with vLLM's messages, request
fields -> SamplingParams, logprob formatting, engine errors -> HTTP errors."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from pagedllm.engine.core_client import EngineDeadError
from pagedllm.entrypoints.openai import deadline
from pagedllm.entrypoints.openai.errors import BadRequestError, ServiceUnavailableError
from pagedllm.entrypoints.openai.protocol import SamplingExtras
from pagedllm.entrypoints.openai.rate_limit import current_token_meter
from pagedllm.entrypoints.openai.serving_beam_search import beam_search_params, beam_search_stream
from pagedllm.entrypoints.openai.serving_models import OpenAIServingModels
from pagedllm.entrypoints.openai.structured_requests import structured_outputs_from_request
from pagedllm.lora.request import LoRARequest
from pagedllm.outputs import Logprob, RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

if TYPE_CHECKING:
    from pagedllm.engine.async_llm import AsyncLLM
    from pagedllm.entrypoints.openai.admission import AdmissionControl

_MIN_LOGPROB = -9999.0
"""-inf is not valid JSON; OpenAI clients get this floor instead (as vLLM does)."""


class OpenAIServing:
    admission: AdmissionControl | None = None
    """Set by the server with --max-num-queued-requests/-tokens: generate_for may answer 503."""
    request_timeout: float | None = None
    """--request-timeout: seconds a generation may take before it is cut short (deadline.py)."""

    def __init__(self, engine: AsyncLLM, models: OpenAIServingModels) -> None:
        self.engine = engine
        self.models = models
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.model_config.max_model_len
        config = getattr(engine, "config", None)
        self.speculative_decoding = getattr(config, "speculative", None) is not None
        """Beam search is refused on a server with speculative decoding (a 400)."""

    # ---- prompts ------------------------------------------------------------------------------

    def tokenize(self, prompt: str | list[int], add_special_tokens: bool) -> list[int]:
        """Token ids of a text or token-id prompt (validated against the vocabulary)."""
        try:
            return self.engine.input_processor.tokenize(prompt, add_special_tokens)
        except ValueError as e:
            raise BadRequestError(str(e), param="prompt") from e

    def truncate_prompt(self, token_ids: list[int], keep: int | None) -> list[int]:
        """truncate_prompt_tokens: the last `keep` tokens (-1: the last max_model_len; None: all).
        The end is kept, as vLLM does: it holds the question a long context leads up to."""
        if keep is None:
            return token_ids
        if keep == -1:
            keep = self.max_model_len
        if keep == 0 or keep > self.max_model_len:
            raise BadRequestError(
                f"truncate_prompt_tokens ({keep}) must be -1 or between 1 and max_model_len "
                f"({self.max_model_len})", param="truncate_prompt_tokens")
        return token_ids[-keep:]

    def check_length(self, num_prompt_tokens: int, max_tokens: int | None,
                     prompt_param: str, max_tokens_param: str) -> int:
        """The request's max_tokens (the rest of the context when None) or a 400 in vLLM's words."""
        limit = self.max_model_len
        if num_prompt_tokens >= limit:
            raise BadRequestError(
                f"This model's maximum context length is {limit} tokens. However, your request "
                f"has {num_prompt_tokens} input tokens. Please reduce the length of the input "
                f"messages.", param=prompt_param, code="context_length_exceeded")
        if max_tokens is None:
            return limit - num_prompt_tokens
        if num_prompt_tokens + max_tokens > limit:
            raise BadRequestError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or "
                f"completion.", param=max_tokens_param, code="context_length_exceeded")
        return max_tokens

    def validate_request(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """The engine's own checks (token ids in the vocabulary...) before any response starts."""
        from pagedllm.engine.input_processor import ProcessedPrompt

        try:
            self.engine.input_processor.validate(ProcessedPrompt(None, prompt_ids), params)
        except ValueError as e:
            raise BadRequestError(str(e)) from e

    # ---- engine -------------------------------------------------------------------------------

    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 request_id: str, lora_request: LoRARequest | None = None,
                 cache_salt: str | None = None, priority: int = 0,
                 multi_modal_data: dict[str, Any] | None = None,
                 ) -> AsyncIterator[RequestOutput]:
        """The engine's stream with its errors mapped to HTTP errors, its usage charged to the
        request's API key (--api-keys-file) when it ends. multi_modal_data: the prompt's images
        (vLLM's {"image": [...]}), whose placeholders prompt_ids holds."""
        prompt: dict[str, Any] = {"prompt_token_ids": prompt_ids}
        if cache_salt is not None:
            prompt["cache_salt"] = cache_salt
        if multi_modal_data:
            prompt["multi_modal_data"] = multi_modal_data
        stream = http_errors(
            self.engine.generate(prompt, params, request_id, priority=priority,
                                 lora_request=lora_request)
        )
        meter = current_token_meter.get()
        if meter is None:
            return stream
        return metered(stream, len(prompt_ids), params.output_kind, meter)

    def generate_for(self, prompt_ids: list[int], request: SamplingExtras,
                     params: SamplingParams, request_id: str,
                     lora_request: LoRARequest | None = None,
                     multi_modal_data: dict[str, Any] | None = None,
                     ) -> AsyncIterator[RequestOutput]:
        """The request's stream: sampling with `params`, or with use_beam_search the n best
        beams as one finished output (its max_tokens and skip_special_tokens from `params`).
        A request beam search cannot serve is a 400 raised here, before anything runs, and so is
        the 503 of a full queue (admission control).
        lora_request: the adapter the request's `model` names (None: the base model)."""
        self._check_priority(request.priority)
        generate = functools.partial(self.generate, lora_request=lora_request,
                                     cache_salt=request.cache_salt, priority=request.priority)
        if not request.use_beam_search:
            with_images = functools.partial(generate, multi_modal_data=multi_modal_data)
            return self._admitted(prompt_ids, params.n, self._timed(prompt_ids, params,
                                                                     request_id, with_images))
        assert params.max_tokens is not None
        if self.engine.model_config.is_encoder_decoder:
            raise BadRequestError("beam search does not run encoder-decoder models yet",
                                  param="use_beam_search")
        beam_params = beam_search_params(request, params.max_tokens, self.speculative_decoding)
        return self._admitted(prompt_ids, beam_params.beam_width, beam_search_stream(
            generate, prompt_ids,
            beam_params, request_id,
            self.engine.model_config.eos_token_ids, self.max_model_len, self.tokenizer,
            params.skip_special_tokens))

    def _check_priority(self, priority: int) -> None:
        """A 400 before anything runs (the engine would refuse it only once the stream starts)."""
        try:
            self.engine.input_processor.validate_priority(priority)
        except ValueError as e:
            raise BadRequestError(str(e), param="priority") from e

    def _timed(self, prompt_ids: list[int], params: SamplingParams, request_id: str,
               generate: Callable[..., AsyncIterator[RequestOutput]],
               ) -> AsyncIterator[RequestOutput]:
        if self.request_timeout is None:
            return generate(prompt_ids, params, request_id)
        final_only = deadline.prepare(params)  # before generate() reads the output kind
        return deadline.with_deadline(generate(prompt_ids, params, request_id),
                                      self.request_timeout, params, final_only, request_id,
                                      prompt_ids)

    def _admitted(self, prompt_ids: list[int], num_seqs: int,
                  stream: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
        if self.admission is None:
            return stream
        ticket = self.admission.admit(len(prompt_ids), num_seqs)
        return self.admission.admitted(ticket, stream)


async def http_errors(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Pass an engine stream through, mapping its errors to HTTP errors (and closing it)."""
    try:
        async with aclosing(stream):  # type: ignore[type-var]
            async for output in stream:
                yield output
    except ValueError as e:
        raise BadRequestError(str(e)) from e
    except EngineDeadError as e:
        raise ServiceUnavailableError(str(e), code="engine_unavailable") from e


async def metered(stream: AsyncIterator[RequestOutput], num_prompt_tokens: int,
                  kind: RequestOutputKind, meter: Callable[[int], None],
                  ) -> AsyncIterator[RequestOutput]:
    """Pass `stream` through; when it ends (finished, failed or abandoned) charge its usage:
    the prompt once plus every sample's generated tokens, as OpenAI's `usage` counts them."""
    generated = 0
    try:
        async with aclosing(stream):  # type: ignore[type-var]
            async for output in stream:
                tokens = sum(len(c.token_ids) for c in output.outputs)
                # DELTA outputs carry only the new tokens; the other kinds carry all so far
                generated = generated + tokens if kind == RequestOutputKind.DELTA else tokens
                yield output
    finally:
        meter(num_prompt_tokens + generated)


def build_sampling_params(
    request: SamplingExtras,
    max_tokens: int,
    logprobs: int | None,
    output_kind: RequestOutputKind,
    prompt_logprobs: int | None = None,
    **extra: Any,
) -> SamplingParams:
    """OpenAI/vLLM request fields -> SamplingParams; a bad combination is a 400 naming it.
    `extra`: endpoint-specific SamplingParams fields (chat's thinking_token_budget)."""
    try:
        return SamplingParams(
            n=request.n,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=request.top_k,
            min_p=request.min_p or 0.0,
            seed=request.seed,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            repetition_penalty=(
                1.0 if request.repetition_penalty is None else request.repetition_penalty),
            logit_bias={int(k): v for k, v in request.logit_bias.items()}
            if request.logit_bias else None,
            max_tokens=max_tokens,
            min_tokens=request.min_tokens,
            stop=request.stop,
            stop_token_ids=request.stop_token_ids,
            ignore_eos=request.ignore_eos,
            skip_special_tokens=request.skip_special_tokens,
            spaces_between_special_tokens=request.spaces_between_special_tokens,
            include_stop_str_in_output=request.include_stop_str_in_output,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            output_kind=output_kind,
            structured_outputs=structured_outputs_from_request(request),
            allowed_token_ids=request.allowed_token_ids,
            bad_words=request.bad_words,
            **extra,
        )
    except (ValueError, TypeError) as e:
        raise BadRequestError(str(e)) from e


def clamp_logprob(value: float) -> float:
    return _MIN_LOGPROB if math.isnan(value) or value < _MIN_LOGPROB else value


def top_logprobs(entry: dict[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    """The k most likely (token id, Logprob) of one position, most likely first."""
    return sorted(entry.items(), key=lambda item: -item[1].logprob)[:k]


def token_text(token_id: int, logprob: Logprob | None, tokenizer: Any,
               as_token_id: bool = False) -> str:
    if as_token_id:
        return f"token_id:{token_id}"
    if logprob is not None and logprob.decoded_token is not None:
        return logprob.decoded_token
    return tokenizer.decode([token_id])


def serialize_prompt_logprobs(prompt_logprobs: list | None) -> list | None:
    """vLLM's prompt_logprobs field: per position {token id: {logprob, rank, decoded_token}}."""
    if prompt_logprobs is None:
        return None
    return [
        None if entry is None else {
            token_id: {"logprob": clamp_logprob(lp.logprob), "rank": lp.rank,
                       "decoded_token": lp.decoded_token}
            for token_id, lp in entry.items()
        }
        for entry in prompt_logprobs
    ]


def sse(data: Any) -> str:
    """One server-sent event holding `data` (a pydantic model or a JSON-able dict)."""
    if hasattr(data, "model_dump_json"):
        return f"data: {data.model_dump_json()}\n\n"
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
