"""CPU binding per rank: each rank on a machine (a TP/PP worker process, a data-parallel engine
core) gets its own disjoint set of the CPUs this process may use, so that ranks do not fight over
cores (one OpenMP pool per rank, each waiting for its slowest thread at every parallel region:
two pools sharing a core make both wait for the scheduler).

    allowed CPUs (os.sched_getaffinity) ─▶ physical cores (hyper-thread siblings grouped)
    ranks on this machine x threads per rank <= cores ─▶ rank i gets cores [i*t, (i+1)*t)
                                               else  ─▶ not pinned, with a warning

The plan is a pure function (plan_cpu_binding) of the cores, the number of ranks and the
threads; apply_cpu_binding pins the calling process (every thread it has, and so the ones it
starts later), sets torch's intra-op threads and OMP_NUM_THREADS for runtimes started later.
One rank alone on the machine is never pinned: there is nobody to share with, and a pinned
single-rank engine would stack every such engine of the machine onto the same CPUs.

Modes (--cpu-omp-threads-bind, vLLM's VLLM_CPU_OMP_THREADS_BIND): "auto" (above), "nobind"
(threads only), or one CPU list per rank on this machine, "0-3|4-7".
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuBindingPlan:
    threads: list[int]
    """Intra-op threads of each rank on this machine."""
    cpus: list[tuple[int, ...]] | None
    """The CPUs each rank is pinned to; None: not pinned."""
    note: str
    """Why it is (not) pinned, for the start-up log."""
    oversubscribed: bool = False
    """Ranks x threads exceed the cores: the ranks share cores (warned)."""

    def describe(self) -> str:
        if self.cpus is None:
            return f"threads per rank {self.threads}, not pinned: {self.note}"
        ranks = ", ".join(f"rank {i} -> cpus {format_cpu_list(cpus)} ({threads} threads)"
                          for i, (cpus, threads) in enumerate(zip(self.cpus, self.threads)))
        return f"{ranks} ({self.note})"


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """"0-3,8,10-11" -> (0, 1, 2, 3, 8, 10, 11)."""
    cpus: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if last < first:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.extend(range(first, last + 1))
    if not cpus:
        raise ValueError(f"empty CPU list {text!r}")
    return tuple(sorted(set(cpus)))


def format_cpu_list(cpus: tuple[int, ...]) -> str:
    """(0, 1, 2, 5) -> "0-2,5"."""
    runs: list[str] = []
    start = prev = None
    for cpu in sorted(cpus):
        if prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    if start is not None:
        runs.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(runs)


def physical_core_groups(allowed: set[int] | None = None) -> list[tuple[int, ...]]:
    """The allowed logical CPUs grouped by physical core (hyper-thread siblings share one core's
    execution units, so matmul threads gain nothing from a sibling), in CPU order; each CPU a
    core of its own where sysfs does not say."""
    allowed = set(os.sched_getaffinity(0)) if allowed is None else set(allowed)
    groups: dict[tuple[int, ...], list[int]] = {}
    for cpu in sorted(allowed):
        path = f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
        try:
            with open(path) as f:
                key = parse_cpu_list(f.read())
        except (OSError, ValueError):
            key = (cpu,)
        groups.setdefault(key, []).append(cpu)
    return sorted((tuple(cpus) for cpus in groups.values()), key=lambda g: g[0])


def plan_cpu_binding(cores: list[tuple[int, ...]], num_ranks: int, threads: int | None,
                     mode: str = "auto") -> CpuBindingPlan:
    """How `num_ranks` ranks on one machine share `cores` (physical cores as groups of logical
    CPUs): `threads` per rank (None: an equal share of the cores, at least 1)."""
    if num_ranks < 1:
        raise ValueError(f"num_ranks must be >= 1, got {num_ranks}")
    share = threads or max(1, len(cores) // num_ranks)
    if mode == "nobind":
        return CpuBindingPlan([share] * num_ranks, None, "--cpu-omp-threads-bind nobind")
    if mode != "auto":
        return _explicit_plan(cores, num_ranks, threads, mode)
    if num_ranks == 1:
        return CpuBindingPlan([share], None, "one rank on this machine")
    needed = num_ranks * share
    if needed > len(cores):
        return CpuBindingPlan(
            [share] * num_ranks, None,
            f"{num_ranks} ranks x {share} threads = {needed} > {len(cores)} cores allowed to "
            f"this process; the ranks share cores (lower --num-threads or the number of ranks)",
            oversubscribed=True)
    cpus = [tuple(cpu for core in cores[i * share:(i + 1) * share] for cpu in core)
            for i in range(num_ranks)]
    return CpuBindingPlan([share] * num_ranks, cpus,
                          f"{needed} of {len(cores)} allowed cores in use")


def _explicit_plan(cores: list[tuple[int, ...]], num_ranks: int, threads: int | None,
                   mode: str) -> CpuBindingPlan:
    lists = [parse_cpu_list(part) for part in mode.split("|")]
    if len(lists) != num_ranks:
        raise ValueError(f"--cpu-omp-threads-bind {mode!r} gives {len(lists)} CPU list(s) for "
                         f"{num_ranks} rank(s) on this machine (one per rank, '|' between)")
    allowed = {cpu for core in cores for cpu in core}
    for cpus in lists:
        if not set(cpus) <= allowed:
            raise ValueError(f"--cpu-omp-threads-bind: CPUs {format_cpu_list(cpus)} are not all "
                             f"allowed to this process ({format_cpu_list(tuple(allowed))})")
    seen: set[int] = set()
    overlap = False
    for cpus in lists:
        overlap |= bool(seen & set(cpus))
        seen |= set(cpus)
    note = "as given; ranks share CPUs" if overlap else "as given"
    return CpuBindingPlan([threads or len(cpus) for cpus in lists], lists, note,
                          oversubscribed=overlap)


def apply_cpu_binding(plan: CpuBindingPlan, index: int) -> None:
    """Give this process rank `index`'s threads and CPUs: every thread it has now (gloo's, a
    started OpenMP pool's) and, by inheritance, the ones it starts later."""
    import torch

    threads = plan.threads[index]
    if len(plan.threads) > 1:  # (a lone rank leaves its process's environment alone)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # runtimes (and children) started later
    if plan.cpus is not None:
        mask = set(plan.cpus[index])
        for tid in _thread_ids():
            try:
                os.sched_setaffinity(tid, mask)
            except (ProcessLookupError, PermissionError):  # the thread ended meanwhile
                pass
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _thread_ids() -> list[int]:
    """This process's threads (Linux); just the calling one elsewhere."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
