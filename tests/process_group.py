"""Run a command whose descendants die with it: a kernel build's ninja and compilers, a
pytest child's engines. subprocess.run kills only the child it started, on its own timeout; a
pytest-timeout or Ctrl-C in the caller leaves the grandchildren compiling without a parent."""

from __future__ import annotations

import os
import signal
import subprocess


def run_process_group(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True) in a session of its own, the whole
    session killed on a timeout or on any exception while waiting."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as proc:  # fmt: skip
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise
        finally:
            try:  # (a daemon the command left behind)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
