"""One first import of transformers per process.

transformers resolves its names lazily, and two threads importing it for the first time at once
can fail (`cannot import name 'AutoConfig' from 'transformers'`): the API server loads the
tokenizer on one thread while another completes the engine's config (core_ipc.with_hf_config).
Each calls `import_transformers()` first, so the first import runs once, under a lock.
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_done = False


def import_transformers() -> None:
    global _done
    if _done:
        return
    with _LOCK:
        if not _done:
            from transformers import AutoConfig, AutoTokenizer  # noqa: F401

            _done = True
