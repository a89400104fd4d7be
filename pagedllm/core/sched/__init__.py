"""Scheduling: queues, stop rules, the Scheduler and its output contract.

Scheduler is re-exported lazily so importing the output contract stays light (and cycle-free).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pagedllm.core.sched.scheduler import Scheduler

__all__ = ["Scheduler"]


def __getattr__(name: str) -> Any:
    if name == "Scheduler":
        from pagedllm.core.sched.scheduler import Scheduler

        return Scheduler
    raise AttributeError(f"module 'pagedllm.core.sched' has no attribute {name!r}")
