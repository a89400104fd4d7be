"""EngineSupervisor's decisions against a stand-in engine (no processes): restart or not, the
health message, back-off after quick deaths, and the hang watchdog."""

from __future__ import annotations

import asyncio
import time

from pagedllm.entrypoints.openai import engine_supervisor
from pagedllm.entrypoints.openai.engine_supervisor import EngineSupervisor, RestartPolicy


class FakeClient:
    def __init__(self, name: str) -> None:
        self.name = name
        self.pid = name
        self.config = object()
        self.num_kv_blocks = 8
        self.killed: str | None = None

    def wait_ready(self, timeout: float | None) -> None:
        pass

    def kill(self, reason: str) -> None:
        self.killed = reason

    def shutdown(self, timeout: float = 0.0) -> None:
        pass


class FakeEngine:
    def __init__(self) -> None:
        self.on_engine_dead: list = []
        self.engine_core = FakeClient("core-0")
        self.errored = False
        self.num_unfinished_requests = 0
        self.last_progress = time.monotonic()

    def die(self, message: str = "killed by SIGKILL") -> None:
        self.errored = True
        for callback in self.on_engine_dead:
            callback(RuntimeError(message))

    def replace_engine_core(self, client: FakeClient) -> None:
        self.engine_core, self.errored = client, False


def _supervisor(policy: RestartPolicy) -> tuple[FakeEngine, EngineSupervisor, list]:
    engine = FakeEngine()
    made: list[FakeClient] = []

    def make_client() -> FakeClient:
        made.append(FakeClient(f"core-{len(made) + 1}"))
        return made[-1]

    return engine, EngineSupervisor(engine, make_client, policy), made  # type: ignore[arg-type]


def test_restarts_off_leaves_the_server_unhealthy():
    async def run():
        engine, supervisor, made = _supervisor(RestartPolicy(enabled=False, hang_timeout=None))
        assert supervisor.health_problem() is None
        engine.die()
        await asyncio.sleep(0.05)
        return supervisor.health_problem(), made

    problem, made = asyncio.run(run())
    assert "--no-restart-engine-on-failure" in problem and "SIGKILL" in problem
    assert made == []


def test_restart_replaces_the_core_and_quick_deaths_back_off(monkeypatch):
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    async def run():
        engine, supervisor, made = _supervisor(RestartPolicy(hang_timeout=None))
        monkeypatch.setattr(engine_supervisor.asyncio, "sleep", recording_sleep)
        for _ in range(4):  # four deaths in quick succession
            engine.die()
            assert "restarting" in supervisor.health_problem()
            await supervisor._task
            assert supervisor.health_problem() is None
        return engine, supervisor, made

    engine, supervisor, made = asyncio.run(run())
    assert [c.name for c in made] == ["core-1", "core-2", "core-3", "core-4"]
    assert engine.engine_core is made[-1] and supervisor.num_restarts == 4
    assert delays == [0.0, 1.0, 2.0, 4.0]


def test_watchdog_kills_a_core_that_stopped_with_requests_in_flight():
    async def run():
        engine, supervisor, _ = _supervisor(RestartPolicy(enabled=False, hang_timeout=0.2))
        await asyncio.sleep(0.4)
        idle_core_killed = engine.engine_core.killed  # idle: no request, no kill
        engine.num_unfinished_requests = 2
        engine.last_progress = time.monotonic()
        await asyncio.sleep(0.1)
        early = engine.engine_core.killed  # in flight, but not stalled long enough
        await asyncio.sleep(0.3)
        await supervisor.close()
        return idle_core_killed, early, engine.engine_core.killed

    idle, early, late = asyncio.run(run())
    assert idle is None and early is None
    assert late is not None and "made no progress" in late and "2 request(s)" in late


def test_an_idle_core_without_heartbeats_is_unhealthy_then_killed():
    """A client that reports heartbeats (MPClient.last_heard): idle and silent past the hang
    timeout is a hang too; /health says so first."""
    async def run():
        engine, supervisor, _ = _supervisor(RestartPolicy(enabled=False, hang_timeout=0.3))
        core = engine.engine_core
        core.last_heard = time.monotonic()
        for _ in range(4):  # heartbeats keep coming: healthy, never killed
            await asyncio.sleep(0.1)
            core.last_heard = time.monotonic()
        beating = (supervisor.health_problem(), core.killed)
        await asyncio.sleep(0.32)  # the heartbeats stopped
        silent = supervisor.health_problem()
        await asyncio.sleep(0.2)
        await supervisor.close()
        return beating, silent, core.killed

    beating, silent, killed = asyncio.run(run())
    assert beating == (None, None)
    assert silent is not None and "no heartbeat" in silent
    assert killed is not None and "while idle (no heartbeat)" in killed
