"""The xdist scheduler of tests/scheduling.py: its units of work and the longest-first order."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import pytest

from tests import scheduling

ISAS = "tests/test_kernel_isas.py::"


def test_scopes_are_files_groups_and_kernel_builds():
    assert scheduling.scope_of("tests/core/test_queue.py::test_a[1]") == "tests/core/test_queue.py"
    assert scheduling.scope_of("tests/model_executor/test_gguf.py::test_x") == "hf-smollm2"
    assert scheduling.scope_of("tests/models/test_gemma3_gguf.py::test_y") == "gemma3-270m"
    default = scheduling.scope_of(f"{ISAS}test_lower_isa_build_passes_kernel_tests[DEFAULT]")
    avx2 = scheduling.scope_of(f"{ISAS}test_lower_isa_build_passes_kernel_tests[AVX2]")
    portable = scheduling.scope_of(f"{ISAS}test_portable_kernels_match_simd_builds")
    assert default == portable != avx2


class _Node:
    def __init__(self, collection: list[str]) -> None:
        self.collection, self.sent = collection, []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.append([self.collection[i] for i in indices])


def test_the_longest_recorded_scope_goes_first(pytestconfig, monkeypatch):
    pytest.importorskip("xdist")
    seconds = {"tests/b.py::t1": 30.0, "tests/c.py::t1": 20.0, "tests/c.py::t2": 15.0}
    monkeypatch.setattr(scheduling, "recorded_durations", lambda: seconds)
    monkeypatch.setattr(pytestconfig.option, "tx", ["2*popen"], raising=False)  # (-n 2)
    collection = [f"tests/a.py::t{i}" for i in range(5)] + ["tests/b.py::t1"]
    collection += ["tests/c.py::t1", "tests/c.py::t2"]
    scheduler = scheduling.make_scheduler(pytestconfig, None)
    node = _Node(collection)
    scheduler.registered_collections[node] = collection
    for nodeid in collection:  # (xdist's own order: the most tests first, a.py)
        scheduler.workqueue.setdefault(scheduling.scope_of(nodeid), OrderedDict())[nodeid] = False
    for _ in range(3):
        scheduler._assign_work_unit(node)
    # c.py: 35 s recorded; b.py: 30 s; a.py: five unrecorded tests
    assert [sent[0].split("::")[0] for sent in node.sent] == ["tests/c.py", "tests/b.py",
                                                              "tests/a.py"]  # fmt: skip


def test_a_recorded_run_updates_the_tests_it_ran(tmp_path, monkeypatch):
    path = tmp_path / "durations.json"
    path.write_text('{"tests/a.py::t": 5.0, "tests/b.py::t": 3.0}')
    monkeypatch.setattr(scheduling, "DURATIONS_PATH", str(path))
    recorder = scheduling.DurationRecorder()
    for nodeid, seconds in (("tests/b.py::t", 0.1), ("tests/c.py::t", 1.5), ("tests/c.py::t", 0.5)):
        recorder.pytest_runtest_logreport(SimpleNamespace(nodeid=nodeid, duration=seconds))
    recorder.pytest_sessionfinish(None)
    # a.py did not run: kept; b.py is fast now: dropped; c.py's phases summed
    assert scheduling.recorded_durations() == {"tests/a.py::t": 5.0, "tests/c.py::t": 2.0}
