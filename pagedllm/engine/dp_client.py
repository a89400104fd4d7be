"""Data parallelism: N engine cores behind one front end (`--data-parallel-size N`).

    LLMEngine / AsyncLLM ── add/abort/finish ──▶ DPLBClient ──▶ DPRouter picks core i
                                                     │  MPClient 0 ─▶ engine-core process 0
                                                     │  MPClient 1 ─▶ engine-core process 1 ...
    get_output() ◀── one queue ◀── reader thread per core (EngineCoreOutputs, engine_index = i)

Each core is a full engine core in its own process (its own executor, workers, scheduler, KV
cache and prefix cache), so each may later be tensor/pipeline parallel itself. The client routes
each new request (dp_router.py), sends aborts and stop-string finishes to the core that holds the
request, and merges the cores' output streams in arrival order, each batch tagged with its core.

A core that dies (its pipe closes) is detected by its own reader thread at once: get_output()
raises EngineCoreDied naming that core's requests, the other cores go on, nothing is routed to the
dead one again; once every core is dead it raises EngineDeadError. With restart_cores (the
server's --restart-engine-on-failure) a dead core is restarted in the background, as the server's
supervisor restarts a single core (deaths in quick succession back off), and joins the routing
again once ready; the engine counts as alive meanwhile, since the other cores serve.

With `--data-parallel-backend ray` the cores are Ray actors placed by one placement group
(engine/ray_core.py: RayCoreClient, the same interface as MPClient), possibly on other machines;
routing, failure and restart are the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from pagedllm.config.parallel import ParallelConfig
from pagedllm.engine.core_client import EngineCoreClient, EngineDeadError, MPClient
from pagedllm.engine.dp_router import DPRouter, NoLiveCoreError
from pagedllm.engine.messages import EngineCoreOutputs, EngineCoreRequest
from pagedllm.logger import init_logger

if TYPE_CHECKING:
    from pagedllm.config import EngineConfig
    from pagedllm.engine.arg_utils import EngineArgs
    from pagedllm.engine.ray_core import RayCoreClient, RayDPPlacement

logger = init_logger(__name__)


_QUICK_DEATH_SECONDS = 60.0
"""A core that dies within this long after its (re)start counts as a quick death: back off."""
_MAX_BACKOFF_SECONDS = 30.0


class EngineCoreDied(EngineDeadError):
    """One data-parallel engine core died; the others go on. Its requests cannot finish."""

    def __init__(self, message: str, engine_index: int, request_ids: list[str]) -> None:
        super().__init__(message)
        self.engine_index = engine_index
        self.request_ids = request_ids


def parallel_config(engine_args: EngineArgs) -> ParallelConfig:
    config = ParallelConfig(data_parallel_size=engine_args.data_parallel_size,
                            data_parallel_routing=engine_args.data_parallel_routing,
                            data_parallel_backend=engine_args.data_parallel_backend,
                            data_parallel_size_local=engine_args.data_parallel_size_local)
    local = config.data_parallel_size_local
    if local is not None and local > config.data_parallel_size:
        raise ValueError(f"data_parallel_size_local ({local}) exceeds data_parallel_size "
                         f"({config.data_parallel_size})")
    if config.data_parallel_backend == "mp" and local not in (None, config.data_parallel_size):
        raise ValueError("data_parallel_size_local below data_parallel_size needs "
                         "--data-parallel-backend ray (the other cores run on other machines)")
    if (config.data_parallel_backend == "ray"
            and engine_args.distributed_executor_backend == "ray"):
        raise ValueError("--data-parallel-backend ray runs each core's ranks as processes on "
                         "the core's node (its placement bundle): use "
                         "--distributed-executor-backend mp (the default) with it")
    return config


def uses_dp_client(engine_args: EngineArgs) -> bool:
    """Several engine cores, or one placed by Ray: the cores run behind a DPLBClient."""
    config = parallel_config(engine_args)
    return config.data_parallel_size > 1 or config.data_parallel_backend == "ray"


def make_core_client(engine_args: EngineArgs, wait_ready: bool = True,
                     restart_cores: bool = False) -> MPClient | DPLBClient:
    """The engine core(s) in their own process(es): one MPClient, or a DPLBClient over N
    (restart_cores: a dead one of the N is restarted)."""
    if uses_dp_client(engine_args):
        return DPLBClient(engine_args, wait_ready=wait_ready, restart_cores=restart_cores)
    return MPClient(engine_args, wait_ready=wait_ready)


def core_engine_args(engine_args: EngineArgs, rank: int, size: int) -> EngineArgs:
    """Core `rank`'s own arguments: a seed of its own (unseeded sampling must not repeat the
    other cores' draws; seeded requests are keyed by their own seed and do not care), and its
    share of the physical cores unless the user chose the threads (flag or PAGEDLLM_NUM_THREADS),
    so N cores (each of tp x pp ranks) do not oversubscribe the machine."""
    from pagedllm import envs
    from pagedllm.utils.system import physical_cores

    threads = engine_args.num_threads
    if threads is None and envs.num_threads() is None:
        ranks_per_core = engine_args.tensor_parallel_size * engine_args.pipeline_parallel_size
        threads = max(1, physical_cores() // (size * ranks_per_core))
    return dataclasses.replace(engine_args, seed=engine_args.seed + rank, num_threads=threads,
                               data_parallel_size=1, data_parallel_backend="mp",
                               data_parallel_rank_local=rank, data_parallel_size_local=size)


class DPLBClient(EngineCoreClient):
    """N MPClients, one interface. Thread safety: add/abort/finish may run on one thread while
    get_output() blocks on another (AsyncLLM's reader thread); the router is shared under a lock.
    """

    def __init__(self, engine_args: EngineArgs, startup_timeout: float | None = None,
                 wait_ready: bool = True, restart_cores: bool = False) -> None:
        self.parallel = parallel_config(engine_args)
        size = self.parallel.data_parallel_size
        self.engine_args = engine_args
        self.startup_timeout = startup_timeout
        self.restart_cores = restart_cores
        """Restart a core that died (the others serve meanwhile)."""
        self.num_restarts = [0] * size
        """Restarts per core so far."""
        self._restarting: set[int] = set()
        self._last_start = [time.monotonic()] * size
        self._quick_deaths = [0] * size
        self.cores: list[MPClient | RayCoreClient] = []
        self._placement: RayDPPlacement | None = None
        try:
            if self.parallel.data_parallel_backend == "ray":
                from pagedllm.engine.ray_core import RayDPPlacement

                self._placement = RayDPPlacement(engine_args, size)
            for rank in range(size):  # they load their models concurrently
                self.cores.append(self._start_core(rank))
        except BaseException:
            self.shutdown(timeout=0.0)
            raise
        self._outputs: queue.Queue[tuple[int, EngineCoreOutputs | BaseException]] = (
            queue.Queue())
        self._lock = threading.Lock()
        self._closing = False
        self.router: DPRouter | None = None
        self.config: EngineConfig | None = None
        if wait_ready:
            self.wait_ready(startup_timeout)

    def _start_core(self, rank: int) -> MPClient | RayCoreClient:
        """Core `rank`, started (a process here, or a Ray actor in its bundle), not yet ready."""
        args = core_engine_args(self.engine_args, rank, self.parallel.data_parallel_size)
        if self._placement is None:
            return MPClient(args, wait_ready=False)
        from pagedllm.engine.ray_core import RayCoreClient

        # (the node's CPUs, not this machine's, are shared out among the cores placed there)
        args = dataclasses.replace(args, num_threads=self.engine_args.num_threads)
        return RayCoreClient(self._placement.core_args(args, rank), self._placement, rank,
                             wait_ready=False)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until every core has loaded its model; EngineStartupFailed (all are stopped) if one
        cannot. Safe to call from a thread while another calls shutdown()."""
        try:
            for core in self.cores:
                core.wait_ready(timeout)
        except BaseException:
            self.shutdown(timeout=0.0)
            raise
        self.config = self.cores[0].config
        assert self.config is not None
        self.router = DPRouter(len(self.cores), self.config.cache.block_size,
                               prefix_aware=self.parallel.data_parallel_routing == "prefix_aware")
        for rank, core in enumerate(self.cores):
            where = f" on {core.node_ip} (Ray)" if hasattr(core, "node_ip") else ""
            logger.info("data-parallel engine core %d: pid %s%s, %s KV blocks", rank, core.pid,
                        where, core.num_kv_blocks)
            threading.Thread(target=self._read, args=(rank,), name=f"DPEngineReader-{rank}",
                             daemon=True).start()

    # ---- what the front end reads ---------------------------------------------------------------

    @property
    def num_engines(self) -> int:
        return len(self.cores)

    @property
    def num_kv_blocks(self) -> int:
        return sum(core.num_kv_blocks or 0 for core in self.cores)

    @property
    def kv_blocks_per_engine(self) -> list[int]:
        return [core.num_kv_blocks or 0 for core in self.cores]

    @property
    def kv_cache_bytes(self) -> int | None:
        sizes = [core.kv_cache_bytes for core in self.cores]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]

    @property
    def pid(self) -> int | None:
        return self.cores[0].pid

    @property
    def pids(self) -> list[int | None]:
        return [core.pid for core in self.cores]

    @property
    def last_heard(self) -> float:
        """When the core heard from longest ago last sent anything (a hung core shows)."""
        return min(core.last_heard for core in self.cores)

    def is_alive(self) -> bool:
        """Every core is running (one dead core makes the engine unhealthy), or, with
        restart_cores, some core serves and every dead one is restarting."""
        if not self.restart_cores:
            return all(core.is_alive() for core in self.cores)
        alive = [core.is_alive() for core in self.cores]
        return any(alive) and all(ok or rank in self._restarting
                                  for rank, ok in enumerate(alive))

    def engine_index_of(self, request_id: str) -> int:
        with self._lock:
            owner = None if self.router is None else self.router.owner(request_id)
        return 0 if owner is None else owner

    # ---- requests -------------------------------------------------------------------------------

    def add_request(self, request: EngineCoreRequest) -> None:
        assert self.router is not None, "wait_ready() first"
        lora = request.lora_request and request.lora_request.lora_name
        with self._lock:
            try:
                rank = self.router.route(request.request_id, request.prompt_token_ids, lora)
            except NoLiveCoreError as e:
                raise EngineDeadError(str(e)) from e
        self.cores[rank].add_request(request)

    def abort_requests(self, request_ids: list[str]) -> None:
        for rank, ids in self._release(request_ids).items():
            self.cores[rank].abort_requests(ids)

    def finish_requests_stopped(self, request_ids: list[str]) -> None:
        for rank, ids in self._release(request_ids).items():
            self.cores[rank].finish_requests_stopped(ids)

    def _release(self, request_ids: list[str]) -> dict[int, list[str]]:
        if self.router is None:
            return {}
        with self._lock:
            return self.router.release(request_ids)

    def call_utility(self, method: str, *args: Any) -> Future:
        """EngineCoreProc.<method>(*args) on every live core; resolves to their results by core
        (None for a dead one)."""
        futures = [core.call_utility(method, *args) if core.is_alive() else None
                   for core in self.cores]
        combined: Future = Future()
        remaining = [f for f in futures if f is not None]

        def done(_: Future) -> None:
            if combined.done() or not all(f.done() for f in remaining):
                return
            with contextlib.suppress(Exception):  # a concurrent caller resolved it
                errors = [f.exception() for f in remaining if f.exception() is not None]
                if errors:
                    combined.set_exception(errors[0])  # type: ignore[arg-type]
                else:
                    combined.set_result([None if f is None else f.result() for f in futures])

        if not remaining:
            combined.set_result([None] * len(futures))
        for future in remaining:
            future.add_done_callback(done)
        return combined

    # ---- outputs --------------------------------------------------------------------------------

    def _read(self, rank: int) -> None:
        """Reader thread of core `rank`: block on its pipe, hand every batch to the queue."""
        core = self.cores[rank]
        while True:
            try:
                outputs = core.get_output()
            except EngineDeadError as e:
                self._outputs.put((rank, e))
                return
            self._outputs.put((rank, outputs))

    def get_output(self) -> EngineCoreOutputs:
        """The next batch of outputs of any core (`engine_index` says which). Raises
        EngineCoreDied when a core died, EngineDeadError once none is left."""
        assert self.router is not None, "wait_ready() first"
        while True:
            if self.router.num_alive == 0 or self._closing:
                raise EngineDeadError("every data-parallel engine core has stopped")
            rank, item = self._outputs.get()
            if isinstance(item, BaseException):
                raise self._core_died(rank, item)
            item.engine_index = rank
            self._observe(rank, item)
            return item

    def _observe(self, rank: int, outputs: EngineCoreOutputs) -> None:
        with self._lock:
            router = self.router
            assert router is not None
            router.started(out.request_id for out in outputs.outputs if out.new_token_ids
                           or out.finish_reason is not None or out.pooling_output is not None)
            router.release(out.request_id for out in outputs.outputs
                           if out.finish_reason is not None)
            if outputs.scheduler_stats is not None:
                router.report(rank, outputs.scheduler_stats.kv_cache_usage)

    def _core_died(self, rank: int, error: BaseException) -> EngineDeadError:
        with self._lock:
            assert self.router is not None
            lost = self.router.core_died(rank)
        if self._closing:
            return EngineDeadError("the engine is shutting down")
        message = (f"data-parallel engine core {rank} (pid {self.cores[rank].pid}) died: {error}; "
                   f"{len(lost)} request(s) on it failed")
        logger.error("%s", message)
        if self.restart_cores:
            self._restarting.add(rank)
            threading.Thread(target=self._restart, args=(rank,), name=f"DPEngineRestart-{rank}",
                             daemon=True).start()
        return EngineCoreDied(message, rank, lost)

    def _restart(self, rank: int) -> None:
        """Start core `rank` again (its own arguments, as at start-up) and route to it once it
        is ready; a core that dies again within a minute of its start waits 1, 2, 4 ... 30 s
        first (as the server's supervisor does for a single core)."""
        quick = time.monotonic() - self._last_start[rank] < _QUICK_DEATH_SECONDS
        self._quick_deaths[rank] = self._quick_deaths[rank] + 1 if quick else 0
        if self._quick_deaths[rank] > 1:
            time.sleep(min(2.0 ** (self._quick_deaths[rank] - 2), _MAX_BACKOFF_SECONDS))
        logger.warning("restarting data-parallel engine core %d (restart %d)", rank,
                       self.num_restarts[rank] + 1)
        try:
            core = self._start_core(rank)
            core.wait_ready(self.startup_timeout)
        except Exception as e:
            logger.error("data-parallel engine core %d could not restart: %s", rank, e)
            self._restarting.discard(rank)  # (the engine is unhealthy from now on)
            return
        with self._lock:
            if self._closing:
                core.shutdown(timeout=0.0)
                return
            old, self.cores[rank] = self.cores[rank], core
            assert self.router is not None
            self.router.core_revived(rank)
            self.num_restarts[rank] += 1
            self._last_start[rank] = time.monotonic()
            self._restarting.discard(rank)
        old.shutdown(timeout=0.0)  # the process is gone: this only releases its pipes
        logger.info("data-parallel engine core %d restarted (pid %s)", rank, core.pid)
        threading.Thread(target=self._read, args=(rank,), name=f"DPEngineReader-{rank}",
                         daemon=True).start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every core, concurrently (each MPClient.shutdown waits for its process)."""
        self._closing = True
        stoppers = [threading.Thread(target=core.shutdown, args=(timeout,), daemon=True)
                    for core in self.cores]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        if self._placement is not None:
            self._placement.remove()
