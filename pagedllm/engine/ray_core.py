"""Data-parallel engine cores as Ray actors (`--data-parallel-backend ray`, vLLM's name), so the
cores of `-dp N` span the machines of a Ray cluster behind one API server.

    API server (Ray driver)                                 Ray actor on any node
    ───────────────────────                                 ─────────────────────
    DPLBClient ── RayCoreClient i ── put([frames]) ──────▶  EngineCoreActor: input FrameQueue
                                 ◀── poll(0.5 s) ───────────  EngineCoreProc busy loop (thread)
                                      [output frames]         output FrameQueue
    RayDPPlacement: one placement group, a bundle of {"CPU": tp x pp} per core

The frames are the engine-core channel's typed MessagePack (core_ipc.py), the same bytes the
mp backend writes on its pipes: Ray carries them as opaque bytes, and neither side decodes
anything but declared message types from them (nothing that came from the network is
unpickled). Each core runs its own executor: its TP/PP ranks are worker processes on the
core's node, inside the core's bundle.

A core's death (its actor killed, its node lost) fails the reader's next poll with a Ray error:
RayCoreClient raises EngineDeadError, and DPLBClient treats it as it treats a dead core process
(its requests fail, the others go on; restarted into the same bundle when restarts are on).
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pagedllm.engine.core_client import (
    EngineDeadError,
    EngineStartupFailed,
    FrameSendingClient,
)
from pagedllm.engine.messages import EngineCoreOutputs
from pagedllm.logger import init_logger

if TYPE_CHECKING:
    from pagedllm.config import EngineConfig
    from pagedllm.engine.arg_utils import EngineArgs

logger = init_logger(__name__)

PLACEMENT_TIMEOUT_S = 60.0
"""How long to wait for the cluster to offer every core its CPUs."""
POLL_SECONDS = 0.5
"""The longest one poll for outputs waits in the actor (it returns early with any frame; the
core's idle heartbeat arrives every 0.5 s)."""


class FrameQueue:
    """One direction of the channel inside the actor: the Connection methods EngineCoreProc
    uses (poll, recv_bytes, send_bytes), over a deque."""

    def __init__(self) -> None:
        self._frames: collections.deque[bytes] = collections.deque()
        self._cond = threading.Condition()

    def send_bytes(self, data: bytes) -> None:
        with self._cond:
            self._frames.append(bytes(data))
            self._cond.notify_all()

    def poll(self, timeout: float | None = 0.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._frames), timeout)

    def recv_bytes(self) -> bytes:
        with self._cond:
            self._cond.wait_for(lambda: bool(self._frames))
            return self._frames.popleft()

    def drain(self, timeout: float) -> list[bytes]:
        """Every frame queued, waiting up to `timeout` seconds for the first."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._frames), timeout)
            frames = list(self._frames)
            self._frames.clear()
            return frames


class EngineCoreActor:
    """The actor's body (made a Ray actor class by RayCoreClient, so importing this module does
    not import Ray): an engine core whose busy loop runs on a thread of the actor."""

    def __init__(self) -> None:
        self.inputs = FrameQueue()
        self.outputs = FrameQueue()

    def pid(self) -> int:
        return os.getpid()

    def node_ip(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def start(self, engine_args: EngineArgs) -> bytes:
        """Load the model; the channel's first frame (EngineReady or EngineStartupError)."""
        import traceback

        from pagedllm.engine.core_ipc import EngineStartupError, encode_output
        from pagedllm.engine.core_proc import EngineCoreProc, _start_core

        try:
            core, ready = _start_core(engine_args)
        except BaseException as e:  # every start-up failure goes back to the client
            message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            return encode_output(EngineStartupError(message, traceback.format_exc()))
        proc = EngineCoreProc(core, self.inputs, self.outputs)  # type: ignore[arg-type]
        threading.Thread(target=self._run, args=(proc,), name="EngineCoreLoop",
                         daemon=True).start()
        return encode_output(ready)

    def _run(self, proc: Any) -> None:
        try:
            proc.run_busy_loop()
        except BaseException:
            logger.exception("engine core died")
            os._exit(1)  # the client sees the actor die, as it sees a core process exit
        proc.core.shutdown()

    def put(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.inputs.send_bytes(frame)

    def poll(self, timeout: float) -> list[bytes]:
        return self.outputs.drain(timeout)


@dataclass(frozen=True)
class CoreSlot:
    """Where core i was placed."""

    bundle_index: int
    node_ip: str
    rank_local: int
    """Its index among the cores on its node."""
    size_local: int
    """The cores on its node."""
    node_cpus: int


class RayDPPlacement:
    """One placement group for the N cores: a bundle of {"CPU": tp x pp} per core (its ranks
    are worker processes inside it); the first `data_parallel_size_local` bundles on the API
    server's node, the rest wherever the cluster has room (PACK: fill a node first). A
    restarted core goes back into its own bundle."""

    def __init__(self, engine_args: EngineArgs, size: int) -> None:
        import ray
        from ray.util.placement_group import placement_group, placement_group_table

        address = engine_args.ray_address or os.environ.get("RAY_ADDRESS")
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
        self.address = address or "local"
        cpus = engine_args.tensor_parallel_size * engine_args.pipeline_parallel_size
        nodes = {node["NodeID"]: node for node in ray.nodes() if node["Alive"]}
        # (the address the cluster knows this node by; a multi-homed driver's own guess may not
        # be it)
        here = nodes[ray.get_runtime_context().get_node_id()]["NodeManagerAddress"]
        local = engine_args.data_parallel_size_local
        bundles: list[dict[str, float]] = [{"CPU": float(cpus)} for _ in range(size)]
        for bundle in bundles[:local or 0]:
            bundle[f"node:{here}"] = 0.001  # Ray's own per-node resource: this node only
        self.group = placement_group(bundles, strategy="PACK")
        try:
            ray.get(self.group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except Exception as e:
            self.remove()
            raise EngineStartupFailed(
                f"the Ray cluster ({self.address}) could not place {size} engine cores of "
                f"{cpus} CPU(s) each within {PLACEMENT_TIMEOUT_S:.0f} s: {e}") from e
        bundle_nodes = placement_group_table(self.group)["bundles_to_node_id"]
        ips = [nodes[bundle_nodes[i]]["NodeManagerAddress"] for i in range(size)]
        self.slots = [
            CoreSlot(i, ip, ips[:i].count(ip), ips.count(ip),
                     int(nodes[bundle_nodes[i]]["Resources"].get("CPU", 1)))
            for i, ip in enumerate(ips)
        ]  # fmt: skip

    def core_args(self, engine_args: EngineArgs, rank: int) -> EngineArgs:
        """Core `rank`'s arguments for its node: the cores there share its CPUs (threads,
        binding), its ranks run as processes beside it."""
        slot = self.slots[rank]
        args = replace(engine_args, data_parallel_rank_local=slot.rank_local,
                       data_parallel_size_local=slot.size_local)
        if args.num_threads is None:
            ranks = args.tensor_parallel_size * args.pipeline_parallel_size
            args = replace(args, num_threads=max(1, slot.node_cpus // (slot.size_local * ranks)))
        return args

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None


class RayCoreClient(FrameSendingClient):
    """One engine core in a Ray actor; MPClient's interface (what DPLBClient uses)."""

    def __init__(self, engine_args: EngineArgs, placement: RayDPPlacement, rank: int,
                 wait_ready: bool = True, startup_timeout: float | None = None) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        slot = placement.slots[rank]
        cpus = engine_args.tensor_parallel_size * engine_args.pipeline_parallel_size
        # the engine's PAGEDLLM_* settings (logging, kernels, threads) reach the core
        env = {key: value for key, value in os.environ.items() if key.startswith("PAGEDLLM_")}
        actor_cls = ray.remote(EngineCoreActor)
        self._actor = actor_cls.options(
            num_cpus=cpus, max_concurrency=4, name=None,
            runtime_env={"env_vars": env},
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=placement.group, placement_group_bundle_index=slot.bundle_index),
        ).remote()  # fmt: skip
        self.node_ip = slot.node_ip
        self._ready_ref = self._actor.start.remote(engine_args)
        self._frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._buffer: collections.deque[bytes] = collections.deque()
        self._closing = False
        self._dead: str | None = None
        self._kill_reason: str | None = None
        self._call_ids = itertools.count()
        self._pending_calls: dict[int, Future] = {}
        self._call_methods: dict[int, str] = {}
        self.last_heard = time.monotonic()
        self.config: EngineConfig | None = None
        self.num_kv_blocks: int | None = None
        self.kv_cache_bytes: int | None = None
        self.pid: int | None = None
        threading.Thread(target=self._feed, name="RayEngineCoreFeeder", daemon=True).start()
        if wait_ready:
            self.wait_ready(startup_timeout)

    def _wait_ready(self, timeout: float | None) -> Any:
        import ray

        from pagedllm.engine.core_ipc import decode_output

        deadline = None if timeout is None else time.monotonic() + timeout
        while not ray.wait([self._ready_ref], timeout=0.2)[0]:
            if self._closing:
                raise EngineStartupFailed("engine start-up cancelled (shutting down)")
            if deadline is not None and time.monotonic() > deadline:
                raise EngineStartupFailed(f"engine core did not start within {timeout:.0f} s")
        try:
            message = decode_output(ray.get(self._ready_ref))
        except ray.exceptions.RayError as e:
            raise EngineStartupFailed(f"engine core actor died during start-up: {e}") from e
        ready = self._accept_ready(message)
        self.pid = ready.pid  # (the actor's process; MPClient's is its own child's)
        return ready

    def is_alive(self) -> bool:
        return self._dead is None and not self._closing

    def kill(self, reason: str) -> None:
        import ray

        self._kill_reason = reason
        ray.kill(self._actor)

    # ---- inputs ---------------------------------------------------------------------------------

    def _feed(self) -> None:
        """Feeder thread: send the queued frames in order, a batch per call, each call awaited
        (a threaded actor may run two calls of one caller out of order)."""
        import ray

        while (frame := self._frames.get()) is not None:
            batch = [frame]
            while True:
                try:
                    more = self._frames.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._frames.put(None)
                    break
                batch.append(more)
            try:
                ray.get(self._actor.put.remote(batch))
            except ray.exceptions.RayError:  # the core died; get_output() reports it
                return

    def _dead_reason(self) -> str | None:
        return None if self.is_alive() else f"engine core actor died ({self._dead})"

    # ---- outputs --------------------------------------------------------------------------------

    def get_output(self) -> EngineCoreOutputs:
        """The core's next outputs; EngineDeadError once the actor is gone."""
        import ray

        from pagedllm.engine.core_ipc import Heartbeat, UtilityOutput, decode_output

        while True:
            if not self._buffer:
                try:
                    self._buffer.extend(ray.get(self._actor.poll.remote(POLL_SECONDS)))
                except ray.exceptions.RayError as e:
                    cause = str(e).splitlines()[0] if str(e) else type(e).__name__
                    raise self._died(cause) from e
                continue
            frame = self._buffer.popleft()
            self.last_heard = time.monotonic()
            message = decode_output(frame, self._call_methods)
            if isinstance(message, Heartbeat):
                continue
            if isinstance(message, UtilityOutput):
                self._resolve_call(message)
                continue
            if not isinstance(message, EngineCoreOutputs):
                reason = f"the engine core sent an unexpected {type(message).__name__}; killed"
                self.kill(reason)
                raise self._died(reason)
            return message

    def _died(self, cause: str) -> EngineDeadError:
        self._dead = cause
        error = EngineDeadError(self._kill_reason or f"engine core actor on {self.node_ip} "
                                                     f"(pid {self.pid}) died: {cause}")
        for future in self._pending_calls.values():
            future.set_exception(error)
        self._pending_calls.clear()
        self._call_methods.clear()
        return error

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the core to stop, give it `timeout` seconds, then kill the actor."""
        import ray

        from pagedllm.engine.core_ipc import EngineCoreRequestType

        if self._closing:
            return
        self._send(EngineCoreRequestType.SHUTDOWN, None)
        self._closing = True
        self._frames.put(None)  # the feeder sends the shutdown, then ends
        if timeout > 0 and self._dead is None:
            time.sleep(min(timeout, 0.5))  # the executor's workers stop with the core
        ray.kill(self._actor)
