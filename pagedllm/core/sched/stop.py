"""Stop conditions checked after each generated token, as small pure functions.

Order: a stop token (EOS unless ignore_eos, or one of stop_token_ids) counts only once
min_tokens tokens were generated, and wins over the length cap (so the last token's reason is
reported as "stop"); the length cap (max_tokens or max_model_len) always applies.
"""

from __future__ import annotations

from pagedllm.request import Request, RequestStatus


def stop_token_hit(request: Request) -> int | None:
    """The stop_token_ids entry the last token matched, or None."""
    last = request.output_token_ids[-1]
    return last if last in (request.sampling_params.stop_token_ids or ()) else None


def eos_hit(request: Request) -> bool:
    params = request.sampling_params
    return not params.ignore_eos and request.output_token_ids[-1] in request.eos_token_ids


def length_capped(request: Request, max_model_len: int) -> bool:
    return request.num_output_tokens >= request.max_tokens or request.num_tokens >= max_model_len


def check_stop(request: Request, max_model_len: int) -> bool:
    """After appending a token: set request.status (and stop_reason) if it must stop."""
    if request.num_output_tokens == 0:
        return False
    if request.num_output_tokens >= request.sampling_params.min_tokens:
        if eos_hit(request):
            request.status = RequestStatus.FINISHED_STOPPED
            request.stop_reason = None
            return True
        stop_id = stop_token_hit(request)
        if stop_id is not None:
            request.status = RequestStatus.FINISHED_STOPPED
            request.stop_reason = stop_id
            return True
    if length_capped(request, max_model_len):
        request.status = RequestStatus.FINISHED_LENGTH_CAPPED
        return True
    return False
