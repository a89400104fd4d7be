"""A loaded model's CPU weights moved into one arena on transparent huge pages (Linux, 2 MiB).

Why: a decode step at batch 1 streams every weight from DRAM once (SmolLM2-135M Q4_1: 66 MB of
layers and a 30 MB LM head per token), and with the loader's allocations (glibc's heap and
mmaps of 4 KiB pages, scattered) each 4 KiB page is a new TLB entry and a new stream for the
core's prefetcher, which does not cross pages. The quantized kernel at one row over SmolLM2's
weights in DRAM (benchmarks/small_linear_sweep.py, AMD Zen 3, results/*_session11.json): a
layer's four linears 187 -> 152 us at 1 thread (CPU clock) and 106 -> 90 us at 2 (wall), the
LM head 2.52 -> 2.02 and 1.23 -> 0.95 ms. The KV cache stays on torch's pages: on it, huge pages
took ~6% off a decode's attention at 1 thread, but a default-sized cache of several GiB then took
seconds to fault in (4 GiB: 5.7-17.9 s against 1.3-1.6, the kernel compacting memory for each
2 MiB page once the free ones ran out), and every engine start pays that.

How: every CPU parameter and buffer's storage is copied into one anonymous mapping advised
MADV_HUGEPAGE (2 MiB aligned), and each tensor on it is re-pointed there in place (Tensor.set_),
so modules, tied weights and views among the parameters (and the bases they were made from)
keep sharing what they shared. Run once
after the load, before anything takes views of the weights (the fused stack's specs): a storage
that something else also holds (a view outside the model's parameters and buffers) is left
where it is, which costs speed but never a second copy of its bytes. The same bytes: the same
outputs. Nothing happens where the kernel's THP is off ("never") or mmap has no MADV_HUGEPAGE.
"""

from __future__ import annotations

import itertools
import logging
import mmap

import torch
from torch import nn

from pagedllm.utils.heap_trim import trim_heap

logger = logging.getLogger(__name__)

HUGE_PAGE = 2 * 2**20
_ALIGN = 64  # every storage's start: a cache line (and any element size)
_THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_available() -> bool:
    """Transparent huge pages can back an madvise'd mapping here."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        with open(_THP_ENABLED) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def _huge_page_region(nbytes: int) -> tuple[torch.Tensor, int]:
    """An anonymous mapping advised onto huge pages as uint8 (holding the mapping alive) and the
    offset of its first 2 MiB boundary (mmap's start is only page aligned: one huge page more)."""
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    whole = torch.frombuffer(region, dtype=torch.uint8)
    return whole, -whole.data_ptr() % HUGE_PAGE


def _storages(model: nn.Module) -> dict[int, tuple[torch.UntypedStorage, list[torch.Tensor]]]:
    """The model's CPU tensors grouped by the storage they live on (by its address)."""
    seen: set[int] = set()
    groups: dict[int, tuple[torch.UntypedStorage, list[torch.Tensor]]] = {}
    for listed in itertools.chain(model.parameters(), model.buffers()):
        if listed.device.type != "cpu" or listed.numel() == 0:
            continue
        # a view's base (e.g. what a buffer was reshaped from) holds the storage too, unlisted
        t = listed
        while t is not None and id(t) not in seen:
            seen.add(id(t))
            storage = t.untyped_storage()
            groups.setdefault(storage.data_ptr(), (storage, []))[1].append(t)
            t = t._base
    return groups


def _held_elsewhere(storage: torch.UntypedStorage, tensors: list[torch.Tensor]) -> bool:
    """Something besides `tensors` (and our one storage object) refers to `storage`."""
    return torch._C._storage_Use_Count(storage._cdata) > len(tensors) + 1


def move_weights_to_huge_pages(model: nn.Module) -> int:
    """Moves `model`'s CPU parameters and buffers into one huge-page arena (see the module
    docstring); returns the bytes moved (0 where huge pages are not available)."""
    if not huge_pages_available():
        return 0
    groups = [g for g in _storages(model).values() if not _held_elsewhere(*g)]
    offsets, size = [], 0
    for storage, _ in groups:
        offsets.append(size)
        size += -(-storage.nbytes() // _ALIGN) * _ALIGN
    if size == 0:
        return 0
    whole, start = _huge_page_region(size)
    arena = whole.untyped_storage()
    groups.reverse()
    for offset in offsets:
        # (popped: each old storage is freed once its tensors move, so the move's peak is the
        # weights and one storage, not the weights twice)
        storage, tensors = groups.pop()
        base = start + offset
        whole[base : base + storage.nbytes()].copy_(
            torch.empty(0, dtype=torch.uint8).set_(storage))
        for t in tensors:
            # (inference tensors take in-place updates only inside inference mode)
            with torch.inference_mode() if t.is_inference() else torch.no_grad():
                t.set_(arena, base // t.element_size() + t.storage_offset(), t.size(), t.stride())
        del storage, tensors, t
    # the old copies were freed, but glibc keeps its heap's pages (the load raised its mmap
    # threshold, so most came from the heap): handed back before the KV cache is sized
    trim_heap()
    logger.info("weights on huge pages: %.1f MiB of %d storages in one arena", size / 2**20,
                len(offsets))  # fmt: skip
    return size
