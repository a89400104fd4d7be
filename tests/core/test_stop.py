from pagedllm.core.sched.stop import check_stop
from pagedllm.request import Request, RequestStatus
from tests.core.core_helpers import make_request

EOS = 2


def _append(request: Request, token: int, max_model_len: int = 100) -> bool:
    request.append_output_token_ids(token)
    return check_stop(request, max_model_len)


def test_eos() -> None:
    request = make_request("r", 3, max_tokens=10, eos_token_ids=(EOS,))
    assert not _append(request, 5)
    assert _append(request, EOS)
    assert request.status == RequestStatus.FINISHED_STOPPED and request.stop_reason is None


def test_ignore_eos() -> None:
    request = make_request("r", 3, max_tokens=10, eos_token_ids=(EOS,), ignore_eos=True)
    assert not _append(request, EOS)


def test_stop_token_ids_set_stop_reason() -> None:
    request = make_request("r", 3, max_tokens=10, stop_token_ids=[7, 8])
    assert _append(request, 8)
    assert request.status == RequestStatus.FINISHED_STOPPED and request.stop_reason == 8


def test_min_tokens_suppresses_stop_tokens_not_length() -> None:
    request = make_request("r", 3, max_tokens=3, eos_token_ids=(EOS,), min_tokens=3,
                           stop_token_ids=[7])
    assert not _append(request, EOS)
    assert not _append(request, 7)
    assert _append(request, EOS)  # 3rd token: min_tokens reached
    assert request.status == RequestStatus.FINISHED_STOPPED
    request = make_request("r", 3, max_tokens=10, min_tokens=5, stop_token_ids=[7])
    assert _append(request, 1, max_model_len=4)  # length cap applies despite min_tokens
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED


def test_max_tokens() -> None:
    request = make_request("r", 3, max_tokens=2)
    assert not _append(request, 1)
    assert _append(request, 1)
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert request.get_finish_reason() is not None
    assert request.get_finish_reason().value == "length"  # type: ignore[union-attr]


def test_max_model_len() -> None:
    request = make_request("r", 3, max_tokens=10)
    assert not _append(request, 1, max_model_len=5)
    assert _append(request, 1, max_model_len=5)
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED


def test_stop_token_wins_over_length() -> None:
    request = make_request("r", 3, max_tokens=1, eos_token_ids=(EOS,))
    assert _append(request, EOS)
    assert request.status == RequestStatus.FINISHED_STOPPED
