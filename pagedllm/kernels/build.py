"""Build a C++ extension once per cache, so that no crash can wedge a later start.

Layout under `root` (`<PAGEDLLM_CACHE_DIR>/kernels/torch<version>/`), per extension name:

    <name>.lock          flock'd by the one process building; holds that process's pid
    <name>.tmp-<pid>/    the build in progress (torch cpp_extension + ninja)
    <name>/              a finished build: <lib>.so, then complete.json, written last

A build happens in its own temporary directory under the lock and is renamed into place when
`complete.json` (the library's size and sha256) is written, so `<name>/` is either absent or
complete. The lock is an OS lock on an open file: the kernel drops it when its holder dies, however
it dies, and the next process cleans up the dead one's temporary directory. torch's own `lock`
file (its FileBaton, which a killed build leaves behind for good) only ever lives in our fresh
temporary directory. Loading a finished build is a checksum and `torch.ops.load_library`: no
ninja, no lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pagedllm.logger import init_logger

logger = init_logger(__name__)

_MANIFEST = "complete.json"
_POLL_SECONDS = 0.2
_PROGRESS_SECONDS = 30.0


@dataclass(frozen=True)
class ExtensionSpec:
    """What to build: torch cpp_extension.load's arguments plus words for the log."""

    name: str
    """Library and directory name; carries a hash of everything that changes the binary."""
    sources: tuple[str, ...]
    """Absolute paths of the .cpp files."""
    cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    description: str = "a C++ extension"
    """For the log: "building <description>, once, ~N s"."""
    expected_seconds: int = 40
    """Rough build time on a 2-core machine, for the log."""


def load_or_build(
    spec: ExtensionSpec, root: str, registered: Callable[[], bool], timeout_s: float
) -> bool:
    """Load the finished build of `spec` under `root`, building it first if there is none (or it
    is corrupt); True when `registered()` says its ops are there. Waits at most `timeout_s` for
    another process's build. Never raises: a failure is a warning and False."""
    try:
        return registered() or _load_or_build(spec, root, registered, timeout_s)
    except Exception as exc:  # no compiler, no ninja, read-only cache, ...
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        logger.warning("%s unavailable (%s: %s); using PyTorch operators",
                       spec.description, type(exc).__name__, first_line)  # fmt: skip
        return False


def _load_or_build(
    spec: ExtensionSpec, root: str, registered: Callable[[], bool], timeout_s: float
) -> bool:
    final_dir = os.path.join(root, spec.name)
    # fast path, no lock: a finished build is complete by construction (renamed into place)
    if _load_finished(final_dir, spec, registered):
        return True
    os.makedirs(root, exist_ok=True)
    with _exclusive(os.path.join(root, f"{spec.name}.lock"), spec, timeout_s) as acquired:
        if not acquired:
            return False
        # whoever held the lock before us may have just finished the build
        if _load_finished(final_dir, spec, registered):
            return True
        _remove_leftovers(root, spec.name)
        _build(spec, root, final_dir)
    if not registered():
        raise RuntimeError(f"{spec.name} built and loaded, but its ops are not registered")
    return True


def _load_finished(final_dir: str, spec: ExtensionSpec, registered: Callable[[], bool]) -> bool:
    """Load `final_dir`'s library if its manifest vouches for it; False if there is no complete
    build (absent, half-written by an older version, truncated, or not loadable)."""
    library = _verified_library(final_dir)
    if library is None:
        return False
    import torch

    start = time.perf_counter()
    try:
        torch.ops.load_library(library)
    except OSError as exc:
        logger.warning("discarding the build in %s, which does not load (%s)", final_dir, exc)
        return False
    if not registered():
        raise RuntimeError(f"{library} loaded, but its ops are not registered")
    logger.info("%s loaded from %s in %.2f s",
                spec.description, final_dir, time.perf_counter() - start)  # fmt: skip
    return True


def _verified_library(build_dir: str) -> str | None:
    """The library `build_dir`'s manifest names, if it has that size and sha256."""
    try:
        with open(os.path.join(build_dir, _MANIFEST)) as f:
            manifest = json.load(f)
        library = os.path.join(build_dir, manifest["library"])
        with open(library, "rb") as f:
            data = f.read()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(data) != manifest.get("size") or _sha256(data) != manifest.get("sha256"):
        logger.warning("discarding the build in %s: its library is not the one built", build_dir)
        return None
    return library


def _build(spec: ExtensionSpec, root: str, final_dir: str) -> None:
    """Build into a fresh `<name>.tmp-<pid>`, write the manifest last, rename into place."""
    tmp_dir = os.path.join(root, f"{spec.name}.tmp-{os.getpid()}")
    os.makedirs(tmp_dir)
    logger.info("building %s, once, ~%d s (into %s)",
                spec.description, spec.expected_seconds, final_dir)  # fmt: skip
    start = time.perf_counter()
    library = _compile(spec, tmp_dir)
    with open(library, "rb") as f:
        data = f.read()
    manifest = {"library": os.path.basename(library), "size": len(data), "sha256": _sha256(data)}
    with open(os.path.join(tmp_dir, _MANIFEST), "w") as f:
        json.dump(manifest, f)
    _move_into_place(tmp_dir, final_dir)
    logger.info("built %s in %.1f s", spec.description, time.perf_counter() - start)


def _compile(spec: ExtensionSpec, build_dir: str) -> str:
    """Build and load the library in `build_dir` (ours alone: torch's FileBaton there is fresh);
    returns its path."""
    from torch.utils.cpp_extension import load

    return load(
        name=spec.name,
        sources=list(spec.sources),
        extra_cflags=list(spec.cflags),
        extra_ldflags=list(spec.ldflags),
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )


def _move_into_place(tmp_dir: str, final_dir: str) -> None:
    if os.path.lexists(final_dir):  # a corrupt build, or one from before manifests
        old_dir = f"{tmp_dir}.old"
        os.rename(final_dir, old_dir)
        os.rename(tmp_dir, final_dir)
        shutil.rmtree(old_dir, ignore_errors=True)
    else:
        os.rename(tmp_dir, final_dir)


def _remove_leftovers(root: str, name: str) -> None:
    """Temporary directories of builders that died (we hold the lock: nobody else builds)."""
    for entry in os.listdir(root):
        if entry.startswith(f"{name}.tmp-"):
            # NOTE: a killed builder's orphaned compiler may still write here; ignore its files
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


@contextlib.contextmanager
def _exclusive(lock_path: str, spec: ExtensionSpec, timeout_s: float) -> Iterator[bool]:
    """Hold an exclusive flock on `lock_path` (True), or give up after `timeout_s` (False). The
    OS releases it when the file is closed, which includes the holder dying."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        acquired = _wait_for_lock(fd, lock_path, spec, timeout_s)
        if acquired:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield acquired
    finally:
        os.close(fd)


def _wait_for_lock(fd: int, lock_path: str, spec: ExtensionSpec, timeout_s: float) -> bool:
    """Poll a non-blocking flock, so the wait can time out and say who it waits for."""
    start = last_report = time.monotonic()
    holder = None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        waited = time.monotonic() - start
        if holder is None:
            holder = _holder(lock_path)
            logger.info("waiting for process %s, which is building %s (lock %s)",
                        holder, spec.description, lock_path)  # fmt: skip
        if waited > timeout_s:
            logger.warning("gave up after %.0f s waiting for process %s to build %s "
                           "(PAGEDLLM_KERNEL_BUILD_TIMEOUT); using PyTorch operators",
                           waited, holder, spec.description)  # fmt: skip
            return False
        if time.monotonic() - last_report >= _PROGRESS_SECONDS:
            last_report, holder = time.monotonic(), _holder(lock_path)
            logger.info("still waiting for process %s's build (%.0f s so far)", holder, waited)
        time.sleep(_POLL_SECONDS)
    if holder is not None:
        logger.info("process %s's build ended after %.1f s of waiting",
                    holder, time.monotonic() - start)  # fmt: skip
    return True


def _holder(lock_path: str) -> str:
    with open(lock_path) as f:
        return f.read().strip() or "?"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
