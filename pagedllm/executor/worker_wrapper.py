"""WorkerWrapper: a Worker behind the executor's byte protocol (executor/messages.py). The
multiprocess executor's worker processes and the Ray executor's actors both host one, so a call
means the same thing wherever the rank runs."""

from __future__ import annotations

import traceback

from pagedllm.config import EngineConfig
from pagedllm.executor.messages import call_args, decode_call, encode_reply
from pagedllm.logger import init_logger
from pagedllm.worker.worker import Worker

logger = init_logger(__name__)


class WorkerFailed(RuntimeError):
    """A call failed on a rank that does not answer it: the rank must stop (its peers would
    otherwise wait for it in a collective), which its executor sees as a dead rank."""


class WorkerWrapper:
    def __init__(self, config: EngineConfig, rank: int, distributed_init_method: str | None):
        self.rank = rank
        self.worker = Worker(config, rank, distributed_init_method)

    def handle(self, data: bytes) -> bytes | None:
        """Run one encoded WorkerCall; the encoded reply, or None when this rank does not
        answer this call. WorkerFailed when a call it does not answer fails."""
        call = decode_call(data)
        answers = call.reply_rank is None or call.reply_rank == self.rank
        try:
            result = getattr(self.worker, call.method)(*call_args(call))
        except Exception as e:
            logger.error("rank %d: %s failed:\n%s", self.rank, call.method, traceback.format_exc())
            if not answers:
                raise WorkerFailed(f"rank {self.rank}: {call.method} failed: {e}") from e
            return encode_reply(error=f"rank {self.rank}: {type(e).__name__}: {e}")
        return encode_reply(result) if answers else None
