"""How pagedllm starts its own processes (engine cores, worker ranks).

A spawned process imports torch and transformers again before it can do anything: ~4 s of CPU on
a 2-core machine for each tensor-parallel rank, each engine core a data-parallel server starts,
each engine-core restart. With PAGEDLLM_PROCESS_START_METHOD=forkserver (the test suite sets it),
processes come instead from a forkserver that imported both once: a fork of it is ready in a
fraction of a second. It is not the default: the forkserver stays resident for the life of its
creator, ~300 MB of private memory (measured USS), which a server that starts one engine core
would pay for nothing (a 1B soak's resident tree grew 2450 -> 2680 MiB at start with it).

A forkserver's child inherits the forkserver's environment, not the current environment of the
process that asked for it (which may have changed since: `--num-threads` exports
OMP_NUM_THREADS, the logger exports PAGEDLLM_LOG_FORMAT, tests set variables). So the creator's
environment travels with each start and replaces the child's before the target runs. Only
third-party modules are preloaded: none of pagedllm's own module-level state is decided in the
forkserver. Elsewhere (Windows) processes are spawned, as before.

Either way the child re-imports the creator's `__main__` as `__mp_main__`: an offline script that
starts ranks still needs its `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

PRELOADED_MODULES = ("torch", "transformers.configuration_utils",
                     "transformers.utils.type_validators",
                     "transformers.models.auto.configuration_auto")
"""Imported once by the forkserver: what unpickling or loading a transformers config needs
(a model family's config module imports type_validators, which pulls in transformers'
activations and torch.distributed.tensor: seconds). A name missing from an older transformers
is skipped (the forkserver ignores an ImportError)."""


def process_context() -> BaseContext:
    """The multiprocessing context pagedllm's processes and their pipes come from."""
    from pagedllm import envs

    if (envs.process_start_method() != "forkserver"
            or "forkserver" not in multiprocessing.get_all_start_methods()):
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOADED_MODULES))  # (read when the server first starts)
    return ctx


def start_process(ctx: BaseContext, target: Callable[..., Any], args: tuple[Any, ...],
                  name: str, daemon: bool = True) -> BaseProcess:
    """Start `target(*args)` in a new process of `ctx` that sees this process's environment
    as it is now."""
    proc = ctx.Process(target=_run_with_environment, args=(dict(os.environ), target, args),
                       name=name, daemon=daemon)  # fmt: skip
    proc.start()
    return proc


def _run_with_environment(environment: dict[str, str], target: Callable[..., Any],
                          args: tuple[Any, ...]) -> None:
    os.environ.clear()
    os.environ.update(environment)
    target(*args)
