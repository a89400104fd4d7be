"""Engine supervision in the API process: what happens after the engine core dies.

`AsyncLLM` notices the death (its client's get_output() raises EngineDeadError), fails every
in-flight request and calls its `on_engine_dead` callbacks; this module is one of them. With
restarts on (`--restart-engine-on-failure`, the default) it starts a new engine core behind the
same AsyncLLM while the HTTP server keeps its socket: /health and new requests answer 503 until
the new core is ready, and nothing that was in flight is re-admitted (its client already got an
error). With restarts off, once `--max-engine-restarts` are spent, or when the new core cannot
start, the server stays up reporting unhealthy (a load balancer or orchestrator takes it out).

Deaths that follow each other quickly back off (1, 2, 4 ... 30 s) so a core that dies at every
start does not spin.

A hung core (a deadlock, a stopped process, a step that never ends) is a death too: the watchdog
kills a core that sent nothing for `--engine-hang-timeout` seconds, and the death path above takes
over. With requests in flight "nothing" means no outputs; while idle the core sends a heartbeat
every half second (core_proc.py), so a loop that stopped ticking with nothing to do is caught as
well, and /health turns 503 once the heartbeats are late by _IDLE_STALE_SECONDS (or the hang
timeout, if shorter), before the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter

from pagedllm.logger import init_logger

if TYPE_CHECKING:
    from pagedllm.engine.async_llm import AsyncLLM
    from pagedllm.engine.core_client import MPClient

logger = init_logger(__name__)

_QUICK_DEATH_SECONDS = 60.0
"""A core that dies within this long after its (re)start counts as a quick death: back off."""
_MAX_BACKOFF_SECONDS = 30.0
_IDLE_STALE_SECONDS = 5.0
"""An idle core heard from longer ago than this (ten heartbeats) makes /health 503."""


@dataclass
class RestartPolicy:
    enabled: bool = True
    """--restart-engine-on-failure / --no-restart-engine-on-failure."""
    max_restarts: int | None = None
    """--max-engine-restarts: restarts over the server's life (None: no limit)."""
    startup_timeout: float | None = None
    """--engine-startup-timeout, for a restarted core as for the first."""
    hang_timeout: float | None = 120.0
    """--engine-hang-timeout: seconds without output, requests in flight, before the core is
    killed as hung (None: never)."""


class EngineSupervisor:
    """Watches one AsyncLLM and restarts its engine core per `policy`.

    make_client: a new engine-core client, started but not waited for (`MPClient(...,
    wait_ready=False)`); the supervisor waits for it in a thread.
    on_restarted: called with the ready client once it serves (the server updates its gauges).
    """

    def __init__(self, engine: AsyncLLM, make_client: Callable[[], MPClient],
                 policy: RestartPolicy, registry: CollectorRegistry | None = None,
                 on_restarted: Callable[[MPClient], None] | None = None) -> None:
        self.engine = engine
        self.make_client = make_client
        self.policy = policy
        self.on_restarted = on_restarted
        self.num_restarts = 0
        self.restarting = False
        self.failure: str | None = None
        """Why the engine is down for good (no restart coming); None while it runs or restarts."""
        self._quick_deaths = 0
        self._started_at = time.monotonic()
        self._task: asyncio.Task | None = None
        self._starting: MPClient | None = None
        self._closed = False
        self._deaths = Counter("pagedllm:engine_core_deaths", "Engine-core processes that died.",
                               registry=registry)
        self._restarts = Counter("pagedllm:engine_core_restarts",
                                 "Engine-core processes restarted after a death.",
                                 registry=registry)
        self._hangs = Counter("pagedllm:engine_core_hangs",
                              "Engine-core processes killed for making no progress.",
                              registry=registry)
        engine.on_engine_dead.append(self._on_dead)
        self._watchdog: asyncio.Task | None = None
        if policy.hang_timeout is not None:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch(policy.hang_timeout))

    def health_problem(self) -> str | None:
        """Why the server cannot serve now (None: it can)."""
        if not self.engine.errored:
            return self._silence_problem()
        if self.failure is not None:
            return self.failure
        if self.restarting or self._task is not None:
            return "the engine core died and is restarting; retry shortly"
        return "the engine core is not running"

    def _idle_silence(self) -> float | None:
        """Seconds since an idle engine core was last heard from; None with requests in flight
        (their outputs are the progress the watchdog measures) or a client without heartbeats."""
        last_heard = getattr(self.engine.engine_core, "last_heard", None)
        if last_heard is None or self.engine.num_unfinished_requests:
            return None
        return time.monotonic() - last_heard

    def _silence_problem(self) -> str | None:
        silence = self._idle_silence()
        limit = _IDLE_STALE_SECONDS
        if self.policy.hang_timeout is not None:
            limit = min(limit, self.policy.hang_timeout)
        if silence is None or silence < limit:
            return None
        return f"the idle engine core has sent no heartbeat for {silence:.0f} s"

    def _on_dead(self, error: BaseException) -> None:
        self._deaths.inc()
        if self._closed:
            return
        policy = self.policy
        if not policy.enabled:
            self._give_up(f"the engine core died ({error}); restarts are off "
                          "(--no-restart-engine-on-failure)")
            return
        if policy.max_restarts is not None and self.num_restarts >= policy.max_restarts:
            self._give_up(f"the engine core died ({error}) after {self.num_restarts} restart(s) "
                          f"(--max-engine-restarts {policy.max_restarts})")
            return
        quick = time.monotonic() - self._started_at < _QUICK_DEATH_SECONDS
        self._quick_deaths = self._quick_deaths + 1 if quick else 0
        delay = 0.0 if self._quick_deaths <= 1 else min(2.0 ** (self._quick_deaths - 2),
                                                        _MAX_BACKOFF_SECONDS)
        self._task = asyncio.get_running_loop().create_task(self._restart(delay))

    def _give_up(self, message: str) -> None:
        self.failure = message
        logger.error("%s; the server stays up and answers 503", message)

    async def _restart(self, delay: float) -> None:
        logger.warning("restarting the engine core%s (restart %d)",
                       f" in {delay:.0f} s" if delay else "", self.num_restarts + 1)
        self.restarting = True
        try:
            await asyncio.sleep(delay)
            client = self.make_client()
            self._starting = client
            await asyncio.to_thread(client.wait_ready, self.policy.startup_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._give_up(f"the engine core could not restart: {e}")
            return
        finally:
            self.restarting = False
            self._starting = None
            self._task = None
        if self._closed:  # the server began shutting down while the core started
            client.shutdown(timeout=0.0)
            return
        self.engine.replace_engine_core(client)
        self.num_restarts += 1
        self._started_at = time.monotonic()
        self._restarts.inc()
        if self.on_restarted is not None:
            self.on_restarted(client)
        logger.info("engine core restarted (pid %s)", client.pid)

    async def _watch(self, timeout: float) -> None:
        """Kill the core when it sent nothing for `timeout` s: no outputs while requests were in
        flight, no heartbeat while idle."""
        killed: object = None
        while not self._closed:
            await asyncio.sleep(min(1.0, timeout / 4))
            engine = self.engine
            core = engine.engine_core
            if core is killed or engine.errored:
                continue
            if engine.num_unfinished_requests:
                stalled = time.monotonic() - engine.last_progress
                what = f"with {engine.num_unfinished_requests} request(s) in flight"
            else:
                silence = self._idle_silence()
                if silence is None:
                    continue
                stalled, what = silence, "while idle (no heartbeat)"
            kill = getattr(core, "kill", None)
            if stalled < timeout or kill is None:
                continue
            reason = (f"the engine core made no progress for {stalled:.0f} s {what} "
                      f"(--engine-hang-timeout {timeout:g}) and was killed")
            logger.error("%s", reason)
            self._hangs.inc()
            killed = core
            kill(reason)

    async def close(self) -> None:
        """Server shutdown: stop a restart under way (its half-started core too)."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._starting is not None:
            self._starting.shutdown(timeout=0.0)  # wait_ready() then raises in its thread
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
