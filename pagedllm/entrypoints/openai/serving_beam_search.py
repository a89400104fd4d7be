"""`use_beam_search: true` on /v1/completions and /v1/chat/completions (vLLM's extra): `n` is the
beam width and the n best beams are the choices. The search is pagedllm/beam_search.py's, the
one `LLM.beam_search` drives; here each step is one `AsyncLLM.generate` per live beam, run
concurrently, so the engine batches them (and the prefix cache shares the prompt's blocks).

What beam search cannot honour is a 400 naming the field rather than silently ignored: streaming
(only the finished beams are known), n over MAX_BEAM_WIDTH, speculative decoding, and the
sampling fields that change which token is picked or when a sequence stops (stop strings, penalties,
top-p/top-k/min-p, constraints...). `temperature` is accepted as vLLM does (it does not change
which beams win: they are ranked by the model's logprobs).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

from pagedllm.beam_search import (
    MAX_BEAM_WIDTH,
    BeamSearch,
    BeamSearchParams,
    BeamSearchSequence,
    StepLogprobs,
    run_beam_search_async,
    step_logprobs,
)
from pagedllm.entrypoints.openai.errors import BadRequestError
from pagedllm.entrypoints.openai.protocol import SamplingExtras
from pagedllm.entrypoints.openai.structured_requests import structured_outputs_from_request
from pagedllm.outputs import CompletionOutput, RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "stop": (None, [], ""),
    "stop_token_ids": (None, []),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0.0),
    "frequency_penalty": (None, 0.0),
    "repetition_penalty": (None, 1.0),
    "top_p": (None, 1.0),
    "top_k": (None, 0, -1),
    "min_p": (None, 0.0),
    "min_tokens": (0,),
    "allowed_token_ids": (None,),
    "bad_words": (None, []),
    "prompt_logprobs": (None,),
    "thinking_token_budget": (None,),
}
"""Fields beam search does not apply, and the values that ask for nothing (so may be sent)."""


def beam_search_params(request: SamplingExtras, max_tokens: int,
                       speculative_decoding: bool = False) -> BeamSearchParams:
    """The request's BeamSearchParams, or a 400 naming what beam search cannot do."""
    check_beam_search_request(request, speculative_decoding)
    try:
        return BeamSearchParams(
            beam_width=request.n, max_tokens=max_tokens, ignore_eos=request.ignore_eos,
            temperature=0.0 if request.temperature is None else request.temperature,
            length_penalty=request.length_penalty,
            include_stop_str_in_output=request.include_stop_str_in_output)
    except ValueError as e:
        raise BadRequestError(str(e)) from e


def check_beam_search_request(request: SamplingExtras, speculative_decoding: bool) -> None:
    if request.stream:
        raise BadRequestError("streaming is not supported with use_beam_search: only the "
                              "finished beams are known", param="stream")
    if request.n > MAX_BEAM_WIDTH:
        raise BadRequestError(f"n (the beam width with use_beam_search) must be <= "
                              f"{MAX_BEAM_WIDTH}, got {request.n}", param="n")
    if speculative_decoding:
        raise BadRequestError("use_beam_search is not supported when the server runs with "
                              "speculative decoding (--speculative-config)",
                              param="use_beam_search")
    for name, neutral in _NEUTRAL.items():
        if getattr(request, name, None) not in neutral:
            raise BadRequestError(f"{name} is not supported with use_beam_search", param=name)
    if structured_outputs_from_request(request) is not None:
        raise BadRequestError("structured outputs (response_format, structured_outputs, "
                              "guided_*, a forced tool_choice) are not supported with "
                              "use_beam_search", param="use_beam_search")


GenerateFn = Callable[[list[int], SamplingParams, str], AsyncIterator[RequestOutput]]
"""OpenAIServing.generate: one request's stream, engine errors mapped to HTTP errors."""


async def beam_search_stream(
    generate: GenerateFn,
    prompt_ids: list[int],
    params: BeamSearchParams,
    request_id: str,
    eos_token_ids: tuple[int, ...],
    max_model_len: int,
    tokenizer: Any,
    skip_special_tokens: bool = True,
) -> AsyncIterator[RequestOutput]:
    """The search of one prompt as a stream of one finished RequestOutput (the shape a
    non-streaming handler consumes), its outputs the best beams, best first."""
    search = BeamSearch(prompt_ids, params, eos_token_ids, max_model_len)
    steps = itertools.count()

    async def run_step(prompts: list[list[int]], num_logprobs: int) -> list[StepLogprobs]:
        step = next(steps)

        async def one(i: int, token_prompt: list[int]) -> StepLogprobs:
            sampling = SamplingParams(max_tokens=1, logprobs=num_logprobs,
                                      temperature=params.temperature, detokenize=False,
                                      output_kind=RequestOutputKind.FINAL_ONLY)
            final = None
            async for output in generate(token_prompt, sampling,
                                         f"{request_id}-step{step}-beam{i}"):
                final = output
            return step_logprobs(final) if final is not None else None

        tasks = [asyncio.ensure_future(one(i, p)) for i, p in enumerate(prompts)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            # One failed (or the client left): cancelling the others aborts their requests.
            for task in tasks:
                task.cancel()

    await run_beam_search_async(search, run_step)
    outputs = [_completion(i, seq, tokenizer, skip_special_tokens)
               for i, seq in enumerate(search.best())]
    yield RequestOutput(request_id=request_id, prompt=None, prompt_token_ids=prompt_ids,
                        outputs=outputs, finished=True)


def _completion(index: int, seq: BeamSearchSequence, tokenizer: Any,
                skip_special_tokens: bool) -> CompletionOutput:
    token_ids = seq.token_ids
    return CompletionOutput(
        index=index, text=tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens),
        token_ids=token_ids, cumulative_logprob=seq.cum_logprob,
        logprobs=seq.logprobs[:len(token_ids)], finish_reason=seq.finish_reason,
        stop_reason=seq.stop_reason)
