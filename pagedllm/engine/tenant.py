"""Who the request being served belongs to, for the scheduler's per-tenant fair share
(core/sched/fair_share.py): the server's API-key middleware sets it for the request it runs,
AsyncLLM copies it onto each engine-core request it adds."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class Tenant:
    name: str
    """The API key's name."""
    weight: int = 1
    """Its `fair_share`: its share of a saturated batch relative to the other keys'."""


current_tenant: contextvars.ContextVar[Tenant | None] = contextvars.ContextVar(
    "pagedllm_current_tenant", default=None)
