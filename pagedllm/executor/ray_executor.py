"""RayDistributedExecutor: one Ray actor per rank, placed by a placement group on a Ray cluster
(vLLM's "ray" backend), so the same command spans machines.

    engine core (Ray driver)                  Ray actor, rank r (any node of the cluster)
    ────────────────────────                  ─────────────────────────────────────────
    ray.init(address)                          RayWorker ─▶ WorkerWrapper(Worker(config, r))
    placement group: world_size bundles
    collective_rpc: the same msgpack bytes ──▶ handle(bytes) ─▶ Worker.<method> ─▶ bytes
    ray.wait on every rank's reply       ◀──   (execute_model: one rank answers, others None)

The cluster is the user's (`ray start --head` on one machine, `ray start --address=head:6379`
on the others; --ray-address or RAY_ADDRESS names it) or, with neither, a local one Ray starts
for this process. The ranks meet over torch.distributed (gloo on CPU) at rank 0's node address.
A rank whose actor dies (node lost, process killed) fails the call that waits on it: WorkerDied.
While the engine is idle no call waits on the ranks, so check_health (which the engine core's
idle loop calls every 0.5 s) pings them at most every HEALTH_CHECK_SECONDS: a dead or hung rank
takes the engine down within seconds, not at the next request.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pagedllm.executor.messages import decode_reply
from pagedllm.executor.multiproc_executor import WorkerDied
from pagedllm.executor.remote import RemoteExecutor
from pagedllm.logger import init_logger

logger = init_logger(__name__)

PLACEMENT_TIMEOUT_S = 60.0
"""How long to wait for the cluster to offer a CPU to every rank."""
HEALTH_CHECK_SECONDS = 1.0
"""While idle, ping the ranks at most this often."""
HEALTH_CHECK_TIMEOUT_S = 10.0
"""An idle rank that does not answer a ping within this long counts as hung (dead)."""


class RayWorker:
    """The actor's body (made a Ray actor class in _actor_class, so importing this module does
    not import Ray)."""

    def __init__(self) -> None:
        self.wrapper: Any = None

    def node_ip(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def pid(self) -> int:
        return os.getpid()

    def free_port(self) -> int:
        from pagedllm.executor.multiproc_executor import _free_port

        return _free_port()

    def start(self, config: Any, rank: int, init_method: str) -> None:
        from pagedllm.executor.worker_wrapper import WorkerWrapper

        self.wrapper = WorkerWrapper(config, rank, init_method)

    def handle(self, data: bytes) -> bytes | None:
        return self.wrapper.handle(data)


class RayDistributedExecutor(RemoteExecutor):
    def _init_workers(self) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        world_size = self.config.parallel.world_size
        address = self.config.parallel.ray_address or os.environ.get("RAY_ADDRESS")
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
        self._placement = placement_group([{"CPU": 1}] * world_size, strategy="PACK")
        ray.get(self._placement.ready(), timeout=PLACEMENT_TIMEOUT_S)
        # the engine's PAGEDLLM_* settings (threads, logging, kernels) reach every rank
        env = {key: value for key, value in os.environ.items() if key.startswith("PAGEDLLM_")}
        actor_cls = ray.remote(num_cpus=1)(RayWorker)
        self._actors = [
            actor_cls.options(
                runtime_env={"env_vars": env},
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self._placement, placement_group_bundle_index=rank),
            ).remote()
            for rank in range(world_size)
        ]  # fmt: skip
        master = ray.get(self._actors[0].node_ip.remote())
        port = ray.get(self._actors[0].free_port.remote())
        init_method = f"tcp://{master}:{port}"
        ray.get([actor.start.remote(self.config, rank, init_method)
                 for rank, actor in enumerate(self._actors)])  # fmt: skip
        pids = ray.get([actor.pid.remote() for actor in self._actors])
        logger.info("started %d Ray actors (pids %s, cluster %s), meeting at %s", world_size,
                    pids, address or "local", init_method)

    def _submit(self, method: str, data: bytes, reply_rank: int | None,
                timeout: float | None) -> Callable[[], list[Any]]:
        # (each actor runs its calls in order, so steps sent ahead queue up there)
        refs = [actor.handle.remote(data) for actor in self._actors]

        def collect() -> list[Any]:
            replies = self._wait_all(refs, timeout)
            results = []
            for rank, reply in enumerate(replies):
                if reply_rank is not None and rank != reply_rank:
                    continue
                error, result = decode_reply(method, reply)
                if error is not None:
                    raise RuntimeError(f"{method} failed on a worker: {error}")
                results.append(result)
            return results

        return collect

    def _wait_all(self, refs: list[Any], timeout: float | None) -> list[Any]:
        """Every rank's reply, in rank order; WorkerDied as soon as one rank fails (its peers
        may be waiting for it in a collective and would never answer) or when `timeout`
        seconds pass without a reply."""
        import ray

        replies: dict[Any, Any] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=timeout)
            if not ready:
                raise WorkerDied(f"{len(pending)} worker rank(s) did not answer within "
                                 f"{timeout:.0f} s (PAGEDLLM_EXECUTE_MODEL_TIMEOUT_SECONDS)")
            for ref in ready:
                try:
                    replies[ref] = ray.get(ref)
                except ray.exceptions.RayError as e:
                    raise WorkerDied(f"worker rank {refs.index(ref)} failed: {e}") from e
        return [replies[ref] for ref in refs]

    def check_health(self) -> None:
        """Ping every rank (at most every HEALTH_CHECK_SECONDS); WorkerDied if one is gone or
        does not answer within HEALTH_CHECK_TIMEOUT_S. Called only while no step is in flight
        (each actor runs its calls in order: a ping queued behind a step would wait for it)."""
        import time

        now = time.monotonic()
        if now - getattr(self, "_last_ping", 0.0) < HEALTH_CHECK_SECONDS:
            return
        self._last_ping = now
        self._wait_all([actor.pid.remote() for actor in self._actors], HEALTH_CHECK_TIMEOUT_S)

    def shutdown(self) -> None:
        import ray

        for actor in getattr(self, "_actors", []):
            ray.kill(actor)
        if getattr(self, "_placement", None) is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._placement)
            self._placement = None
        self._actors = []
