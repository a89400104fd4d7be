"""StepProfiler: wall time of each phase of an engine step, off by default.

    LLMEngine.step ─┬─ EngineCore.step ─┬─ schedule          (Scheduler.schedule)
                    │                   ├─ prepare_inputs    (ModelRunner: states, packing)
                    │                   ├─ forward           (the model)
                    │                   ├─ sample            (LM head + sampler)
                    │                   └─ update            (Scheduler.update_from_output)
                    └─ output                                (detokenize, stop strings, outputs)

The outermost `profiler.step()` makes the profiler current (a ContextVar, reset on exit) so code
that does not hold it, the model runner, times its phases with `step_phase(name)`. Everything is a
shared no-op context manager when the profiler is disabled or none is current: one attribute test
(or one ContextVar lookup) per phase. Time not inside a phase is reported as "other".

Enable it with PAGEDLLM_STEP_PROFILE=N (log the breakdown every N steps) or programmatically:

    profiler = llm.llm_engine.step_profiler
    profiler.reset(); profiler.enabled = True
    llm.generate(...)
    print(profiler.format_table())
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass

from pagedllm.logger import init_logger

logger = init_logger(__name__)

PHASES = ("schedule", "prepare_inputs", "forward", "sample", "update", "output")
"""The named phases in step order; "other" (the rest of the step) is added by report()."""
OVERHEAD_PHASES = ("schedule", "prepare_inputs", "sample", "update", "output", "other")
"""Everything but the forward pass: Python/engine work per step. NOTE: "sample" includes the LM
head (compute_logits), which is model compute."""


class _NullContext(AbstractContextManager):
    __slots__ = ()

    def __exit__(self, *exc: object) -> None:
        return None


_NULL = _NullContext()
_CURRENT: ContextVar[StepProfiler | None] = ContextVar("pagedllm_step_profiler", default=None)


class _Phase(AbstractContextManager):
    __slots__ = ("profiler", "name", "start")

    def __init__(self, profiler: StepProfiler, name: str) -> None:
        self.profiler, self.name = profiler, name

    def __enter__(self) -> _Phase:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.profiler.add(self.name, time.perf_counter() - self.start)


class _Step(AbstractContextManager):
    __slots__ = ("profiler", "start", "token")

    def __init__(self, profiler: StepProfiler) -> None:
        self.profiler = profiler

    def __enter__(self) -> _Step:
        self.token = _CURRENT.set(self.profiler)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        _CURRENT.reset(self.token)
        self.profiler.end_step(elapsed)


@dataclass(frozen=True)
class PhaseStat:
    name: str
    total_s: float
    ms_per_step: float
    percent: float
    """Share of the total step time (0..100)."""


class StepProfiler:
    """Accumulates wall time per phase over the steps it saw.

    steps: steps completed since reset(); step_seconds: their total wall time; seconds: per phase
    name, the time spent inside that phase (a phase may run more than once per step)."""

    def __init__(self, enabled: bool = False, log_every: int | None = None) -> None:
        self.enabled = enabled
        """Off: step() and phase() return a shared no-op context manager."""
        self.log_every = log_every
        """Log the breakdown every this many steps (None: never)."""
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.step_seconds = 0.0
        self.seconds: dict[str, float] = {}

    def step(self) -> AbstractContextManager:
        """Time one step and make this profiler current; a no-op when nested in its own step."""
        if not self.enabled or _CURRENT.get() is self:
            return _NULL
        return _Step(self)

    def phase(self, name: str) -> AbstractContextManager:
        return _Phase(self, name) if self.enabled else _NULL

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def end_step(self, seconds: float) -> None:
        self.steps += 1
        self.step_seconds += seconds
        if self.log_every and self.steps % self.log_every == 0:
            logger.info("step profile over %d steps:\n%s", self.steps, self.format_table())

    def report(self) -> list[PhaseStat]:
        """One row per phase seen (PHASES order first), then "other"; percents of step time."""
        names = [p for p in PHASES if p in self.seconds]
        names += sorted(set(self.seconds) - set(PHASES))
        other = max(0.0, self.step_seconds - sum(self.seconds[n] for n in names))
        rows = [(n, self.seconds[n]) for n in names] + [("other", other)]
        steps, total = max(self.steps, 1), self.step_seconds or 1.0
        return [PhaseStat(n, s, 1000 * s / steps, 100 * s / total) for n, s in rows]

    def overhead_percent(self) -> float:
        """Share of the step (%) not in the forward pass."""
        return sum(r.percent for r in self.report() if r.name != "forward")

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "ms_per_step": 1000 * self.step_seconds / max(self.steps, 1),
            "phases": {
                r.name: {"ms_per_step": r.ms_per_step, "percent": r.percent} for r in self.report()
            },
            "overhead_percent": self.overhead_percent(),
        }

    def format_table(self) -> str:
        lines = [f"{'phase':<16}{'ms/step':>10}{'%':>8}"]
        lines += [f"{r.name:<16}{r.ms_per_step:>10.3f}{r.percent:>7.1f}%" for r in self.report()]
        lines.append(
            f"{'step':<16}{1000 * self.step_seconds / max(self.steps, 1):>10.3f}"
            f"{100.0 if self.steps else 0.0:>7.1f}%  ({self.steps} steps)"
        )
        lines.append(
            f"not forward (engine overhead; the LM head counts as forward): "
            f"{self.overhead_percent():.1f}%"
        )
        return "\n".join(lines)


def step_phase(name: str) -> AbstractContextManager:
    """`with step_phase("forward"):` times a phase on the current profiler, if any (no-op else)."""
    profiler = _CURRENT.get()
    return _NULL if profiler is None else profiler.phase(name)


def profiler_from_env() -> StepProfiler:
    """Enabled, logging every N steps, when PAGEDLLM_STEP_PROFILE=N (N > 0)."""
    from pagedllm import envs

    every = envs.step_profile()
    return StepProfiler(enabled=every is not None, log_every=every)
