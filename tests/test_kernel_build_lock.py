"""Kernel builds survive crashes and races (pagedllm/kernels/build.py). Each test runs child
processes that build a one-op C++ extension (~5 s, not the kernels' ~40 s) into a temporary
PAGEDLLM_CACHE_DIR: one killed with SIGKILL while it holds the build lock, two started together,
a corrupt finished build, and a half-written one (no manifest) with torch's stale `lock`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None or shutil.which("ninja") is None,
    reason="no C++ compiler / ninja",
)

_NAME = "pagedllm_build_test"
_SOURCE = """
#include <torch/library.h>

static int64_t answer(int64_t x) { return x + 42; }

TORCH_LIBRARY(pagedllm_build_test, m) { m.def("answer(int x) -> int", &answer); }
"""
# Builds (or loads) the extension and prints RESULT; with HOLD set, the build waits forever once
# it holds the lock and torch's `lock` is in its directory: where a real build is killed.
_CHILD = """
import os, sys, time
import torch
from pagedllm import envs
from pagedllm.kernels import build, kernel_build_root

if os.environ.get("HOLD"):
    def held(spec, build_dir):
        open(os.path.join(build_dir, "lock"), "w").close()
        open(os.environ["HOLD"], "w").close()
        time.sleep(3600)
    build._compile = held
spec = build.ExtensionSpec(name={name!r}, sources=(sys.argv[1],), description="the test op",
                           expected_seconds=5)
ok = build.load_or_build(spec, kernel_build_root(), timeout_s=envs.kernel_build_timeout(),
                         registered=lambda: hasattr(torch.ops.{name}, "answer"))
print("RESULT", ok, torch.ops.{name}.answer(1) if ok else None, flush=True)
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """(source path, build root) under a fresh PAGEDLLM_CACHE_DIR, set for the children."""
    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PAGEDLLM_LOGGING_LEVEL", "INFO")
    monkeypatch.setenv("PAGEDLLM_KERNEL_BUILD_TIMEOUT", "60")
    source = tmp_path / "answer.cpp"
    source.write_text(_SOURCE)
    import torch

    root = tmp_path / "cache" / "kernels" / f"torch{torch.__version__}"
    return str(source), root


@pytest.fixture(scope="module")
def finished_build(tmp_path_factory):
    """One good build (directory of `_NAME`), built once, copied by the tests that corrupt it."""
    tmp = tmp_path_factory.mktemp("template")
    source = tmp / "answer.cpp"
    source.write_text(_SOURCE)
    env = dict(os.environ, PAGEDLLM_CACHE_DIR=str(tmp / "cache"))
    out = _wait(_start(str(source), env))
    assert "RESULT True 43" in out, out
    (build_dir,) = (tmp / "cache" / "kernels").glob(f"*/{_NAME}")
    return build_dir


def _start(source: str, env=None, **extra_env) -> subprocess.Popen:
    env = dict(env or os.environ, **extra_env)
    script = textwrap.dedent(_CHILD).format(name=_NAME)
    return subprocess.Popen([sys.executable, "-c", script, source], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def _wait(proc: subprocess.Popen, timeout: float = 180) -> str:
    # (a wedged start is caught here: torch's own lock would wait forever; the bound is wide
    # because CI runs this beside another xdist worker and a build there takes ~10-40 s)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _run(source: str) -> tuple[str, float]:
    start = time.perf_counter()
    out = _wait(_start(source))
    return out, time.perf_counter() - start


def test_killed_build_does_not_wedge_the_next_start(cache, tmp_path):
    source, root = cache
    held = tmp_path / "held"
    proc = _start(source, HOLD=str(held))
    try:
        deadline = time.monotonic() + 30
        while not held.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.1)
        # a second start waits on the live holder, names it, and gives up at the bound
        out = _wait(_start(source, PAGEDLLM_KERNEL_BUILD_TIMEOUT="1"))
        assert "RESULT False" in out and f"waiting for process {proc.pid}," in out, out
        assert "gave up after" in out, out
        proc.send_signal(signal.SIGKILL)  # mid-build: lock taken, torch's `lock` in its dir
        proc.wait()
    finally:
        proc.kill()
    (leftover,) = root.glob(f"{_NAME}.tmp-*")
    assert (leftover / "lock").exists()
    out, _ = _run(source)
    assert "RESULT True 43" in out and "waiting for process" not in out, out
    assert not list(root.glob(f"{_NAME}.tmp-*")), "the dead build's directory is cleaned up"


def test_two_first_starts_build_once(cache):
    source, _ = cache
    procs = [_start(source) for _ in range(2)]
    outs = [_wait(p) for p in procs]
    for out in outs:
        assert "RESULT True 43" in out, out
    logs = "".join(outs)
    assert logs.count("building the test op, once") == 1, logs
    assert logs.count("] waiting for process") == 1, logs  # (a slow build adds "still waiting")


def test_finished_build_loads_without_building(cache, finished_build):
    source, root = cache
    shutil.copytree(finished_build, root / _NAME)
    out, _ = _run(source)
    assert "RESULT True 43" in out and "building" not in out, out
    assert "waiting" not in out, out


@pytest.mark.parametrize("damage", ["truncated", "unloadable"])
def test_corrupt_build_is_rebuilt(cache, finished_build, damage):
    source, root = cache
    build_dir = root / _NAME
    shutil.copytree(finished_build, build_dir)
    manifest_path = build_dir / "complete.json"
    manifest = json.loads(manifest_path.read_text())
    library = build_dir / manifest["library"]
    data = library.read_bytes()
    if damage == "truncated":
        library.write_bytes(data[: len(data) // 2])
    else:  # the manifest vouches for it, dlopen refuses it
        library.write_bytes(b"\0" * len(data))
        manifest["sha256"] = hashlib.sha256(library.read_bytes()).hexdigest()
        manifest_path.write_text(json.dumps(manifest))
    out, _ = _run(source)
    assert "RESULT True 43" in out and "building the test op, once" in out, out
    # detected by its checksum, or by dlopen when the checksum vouches for it
    assert ("is not the one built" if damage == "truncated" else "does not load") in out, out
    manifest = json.loads(manifest_path.read_text())
    rebuilt = (build_dir / manifest["library"]).read_bytes()
    assert hashlib.sha256(rebuilt).hexdigest() == manifest["sha256"] and rebuilt[:4] == b"\x7fELF"


def test_stale_torch_lock_does_not_hang(cache, finished_build):
    """A build directory as torch's FileBaton leaves it when killed: the library maybe there, no
    manifest, and a `lock` file that torch would wait on forever."""
    source, root = cache
    build_dir = root / _NAME
    shutil.copytree(finished_build, build_dir)
    (build_dir / "complete.json").unlink()
    (build_dir / "lock").touch()
    out, _ = _run(source)
    assert "RESULT True 43" in out and "building the test op, once" in out, out
    assert not (build_dir / "lock").exists()
    assert "waiting" not in out, out
