"""A/B measurements on a shared machine, as benchmarks/*_ab.py and the kernel benchmarks take
them: the load average beside every figure, forms of one computation alternating call by call in
one process (best of the repetitions), and fresh benchmark processes that write a JSON record."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded: what a timing is read against."""
    return [round(x, 2) for x in os.getloadavg()]


def best_alternating(
    calls: dict[str, Callable[[], object]], reps: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:  # fmt: skip
    """Each form's best time over `reps` calls, the forms called in turn and the order flipping
    every repetition (the machine's drift cancels in the ratios; the best call is the least
    disturbed). clock: time.perf_counter (wall), or time.thread_time at one thread so that a
    preempted call does not count."""
    best = dict.fromkeys(calls, float("inf"))
    order = list(calls)
    for rep in range(reps):
        for form in order if rep % 2 == 0 else order[::-1]:
            start = clock()
            calls[form]()
            best[form] = min(best[form], clock() - start)
    return best


def run_json_process(cmd: list[str], env: dict[str, str], cwd: str) -> dict:
    """Run `cmd --output-json FILE` and return the record it wrote there, with the load average
    before and after the run ("load_before", "load_after"); a failed run raises with the tail
    of its stderr."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        full = [*cmd, "--output-json", out.name]
        before = load_average()
        done = subprocess.run(full, cwd=cwd, env=env, capture_output=True, text=True)
        after = load_average()
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(full)} failed:\n{done.stderr[-3000:]}")
        with open(out.name) as f:
            record = json.load(f)
    record["load_before"], record["load_after"] = before, after
    return record
