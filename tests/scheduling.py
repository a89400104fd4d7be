"""How xdist hands the suite to its workers: whole files, a few files as one unit, the longest
first.

CI runs `pytest -n 2` under a hard time limit, and the wall time is the busier worker's. xdist's
own order (files with the most tests first) handed out last the few files that run for minutes
(kernel builds, real models read by transformers: three tests or fewer each), so one worker ran
them alone after the other had finished. Handed out longest first, by the seconds recorded in
tests/durations.json, the short files fill in around them. Refresh the record after a change that
moves the slow tests (only the order depends on it, never a result):

    python -m pytest -n 2 --record-durations
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

DURATIONS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "durations.json")
RECORDED_FROM_SECONDS = 0.5
"""Tests faster than this are left out of the record (and counted as UNRECORDED_SECONDS)."""
UNRECORDED_SECONDS = 0.2

FILE_GROUPS = {
    # They load the same real GGUF into transformers (tens of seconds each time: it dequantizes
    # in Python): one worker, so tests/hf_reference.py's cached model is built once.
    "tests/engine/test_smollm2_gguf.py": "hf-smollm2",
    "tests/engine/test_beam_search_smollm2.py": "hf-smollm2",
    "tests/model_executor/test_gguf.py": "hf-smollm2",
    "tests/distributed/test_tensor_parallel_smollm2.py": "hf-smollm2",
    # The same for the Gemma 3 270M GGUF. (Engines on it no longer need grouping: its tokenizer,
    # once converted by transformers at each process's first start, ~100 s of 115 s on the
    # loaded 2-core machine, is built by pagedllm in a few seconds, tokenizer/gguf_gemma.py.)
    "tests/model_executor/test_gguf_gemma3.py": "gemma3-270m",
    "tests/models/test_gemma3_gguf.py": "gemma3-270m",
    # transformers' tokenizer conversion of the same file, the reference for ours: it reuses
    # the process's parse of the file (hf_reference.hf_gguf_tokenizer)
    "tests/tokenizer/test_gguf_gemma_tokenizer.py": "gemma3-270m",
}


def scope_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its file, its file's group, or (the kernel builds)
    one instruction set's tests."""
    path = nodeid.split("::", 1)[0]
    if path == "tests/test_kernel_isas.py":
        # Each lower build runs its tests in subprocesses, nothing shared: two builds on two
        # workers halve the file's minutes. The portable build's comparison with the SIMD
        # builds goes with the portable build's tests (else it would wait for that build).
        return f"{path}::{'AVX2' if '[AVX2]' in nodeid else 'DEFAULT'}"
    return FILE_GROUPS.get(path, path)


def recorded_durations() -> dict[str, float]:
    """Seconds per test id (setup, call and teardown) from the last recorded run."""
    try:
        with open(DURATIONS_PATH) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def make_scheduler(config, log):
    """xdist's LoadScopeScheduling with our scopes and longest-first hand-out."""
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirstScheduling(LoadScopeScheduling):
        def __init__(self, config, log=None) -> None:
            super().__init__(config, log)
            self._seconds = recorded_durations()

        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

        def _assign_work_unit(self, node) -> None:
            # NOTE: xdist hands out the first unit of its (ordered) work queue.
            longest = max(self.workqueue, key=self._expected_seconds)
            self.workqueue.move_to_end(longest, last=False)
            super()._assign_work_unit(node)

        def _expected_seconds(self, scope: str) -> float:
            return sum(self._seconds.get(nodeid, UNRECORDED_SECONDS)
                       for nodeid in self.workqueue[scope])  # fmt: skip

    return LongestFirstScheduling(config, log)


class DurationRecorder:
    """Sums each test's phases as the reports arrive (in the xdist controller, or the only
    process) and updates DURATIONS_PATH with the tests that ran: those of RECORDED_FROM_SECONDS
    or more are written, the others dropped, the tests that did not run kept as they were."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report) -> None:
        self.seconds[report.nodeid] += report.duration

    def pytest_sessionfinish(self, session) -> None:
        record = recorded_durations()
        for nodeid, seconds in self.seconds.items():
            record.pop(nodeid, None)
            if seconds >= RECORDED_FROM_SECONDS:
                record[nodeid] = round(seconds, 1)
        with open(DURATIONS_PATH, "w") as f:
            json.dump(dict(sorted(record.items())), f, indent=0)
            f.write("\n")
