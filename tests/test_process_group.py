"""tests/process_group.py: a command's descendants die with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.process_group import run_process_group

# Starts a grandchild that would sleep for a minute, prints its pid, then waits on it
_PARENT = ("import subprocess, sys; "
           "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
           "print(child.pid, flush=True); child.wait()")  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_timeout_kills_the_grandchildren(tmp_path):
    out = tmp_path / "pid"
    with pytest.raises(subprocess.TimeoutExpired):
        run_process_group(["sh", "-c", f"{sys.executable} -c \"{_PARENT}\" > {out}"], timeout=3)
    grandchild = int(out.read_text().split()[0])
    deadline = time.monotonic() + 5
    while _alive(grandchild):
        assert time.monotonic() < deadline, "the grandchild outlived the timeout"
        time.sleep(0.05)


def test_the_result_is_subprocess_runs():
    result = run_process_group([sys.executable, "-c", "import sys; print('out'); "
                                "print('err', file=sys.stderr); sys.exit(3)"], timeout=30,
                               env={**os.environ, "X": "1"})  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
