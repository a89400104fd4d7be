"""Handing the heap memory a step freed back to the OS (glibc's malloc_trim), when the step
grew the resident set.

Why: glibc serves an allocation below its mmap threshold from the heap, and that threshold
rises (to 32 MiB on 64-bit) each time a larger mmapped block is freed, which loading a model
does hundreds of times. From then on a long prefill's per-step tensors (a 2048-token chunk's
[T, hidden] rows: 16 MiB each for a 1B Llama) come from the heap, and when they are freed glibc
keeps their pages resident (only a free top of the heap past the trim threshold goes back): a
1B Q4_K_M server held ~260 MiB more after ten minutes of load than at start. malloc_trim(0)
also returns the free pages inside the heap (madvise), at the cost of faulting them in again at
the next long step (~10 ms per 100 MiB; a 2048-token chunk takes seconds).

Only after a step whose resident set grew by `threshold` bytes since the last look: a decode
step's few hundred KiB of rows are left to the heap (trimming and faulting them again every
step would cost more than they hold). Reading the resident size is one pread of
/proc/self/statm (~5 us). Elsewhere (no glibc, no /proc) it does nothing.
"""

from __future__ import annotations

import ctypes
import os

HEAP_TRIM_THRESHOLD = 32 * 2**20
"""Resident growth over one step that makes the step end with a malloc_trim(0)."""


def _malloc_trim() -> ctypes._CFuncPtr | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim_heap() -> None:
    """malloc_trim(0) once, now (after freeing much at once outside a step); nothing elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class HeapTrimmer:
    """`after_step()` after each step: trims the heap once the resident set is `threshold` bytes
    above the lowest it was since the last trim (measured again after the trim, so growth counts
    from what stays)."""

    def __init__(self, threshold: int = HEAP_TRIM_THRESHOLD) -> None:
        self.threshold = threshold
        self.trims = 0
        """malloc_trim calls so far (tests and logs)."""
        self._trim = _malloc_trim()
        self._statm: int | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        if self._trim is not None:
            try:
                self._statm = os.open("/proc/self/statm", os.O_RDONLY)
            except OSError:
                self._trim = None
        self._baseline = self.resident_bytes()

    @property
    def enabled(self) -> bool:
        return self._trim is not None

    def resident_bytes(self) -> int:
        """The process's resident set (0 where it cannot be read)."""
        if self._statm is None:
            return 0
        # "size resident shared ..." in pages; pread: the same descriptor, read again
        return int(os.pread(self._statm, 128, 0).split()[1]) * self._page

    def after_step(self) -> bool:
        """Trim if the resident set grew by `threshold`; True if it did."""
        if self._trim is None:
            return False
        rss = self.resident_bytes()
        grew = rss - self._baseline >= self.threshold
        if grew:
            self.trim()
        else:
            self._baseline = min(self._baseline, rss)
        return grew

    def trim(self) -> None:
        """Return the heap's free pages now (start-up: after the load and the cache)."""
        if self._trim is None:
            return
        self._trim(0)
        self.trims += 1
        self._baseline = self.resident_bytes()

    def close(self) -> None:
        if self._statm is not None:
            os.close(self._statm)
            self._statm = None
            self._trim = None
