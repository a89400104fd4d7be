"""API keys with identities (`--api-keys-file`): who a key is, what it may use and how fast.

The file (JSON, or YAML for a .yaml/.yml name) maps each key to its identity:

    {"sk-alice": {"name": "alice", "requests_per_minute": 60, "tokens_per_minute": 20000,
                  "max_concurrent": 4, "allowed_models": ["tiny"], "fair_share": 2},
     "sha256:9f86d0...": {"name": "bob"}}

Every field but `name` may be left out (no limit; all models; a fair share of 1). `fair_share` is
the key's weight when the batch is full: each key holds running requests in proportion to it, and
the requests of a key over its share wait behind the other keys' (core/sched/fair_share.py).

A key may be written as "sha256:<hex digest>" so the file need not hold it in clear. In memory
only SHA-256 digests are kept, and a lookup compares the given key's digest with every stored
one (hmac.compare_digest, no early exit), so neither the time taken nor a dict lookup says which
key nearly matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from typing import Any

_FIELDS = {"name", "requests_per_minute", "tokens_per_minute", "max_concurrent",
           "allowed_models", "fair_share"}
_LIMITS = ("requests_per_minute", "tokens_per_minute", "max_concurrent")
_MAX_FAIR_SHARE = 1_000_000


@dataclass(frozen=True)
class ApiKeyIdentity:
    name: str
    """Shown in metrics and logs instead of the key."""
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    """Prompt + completion tokens, charged when each request ends."""
    max_concurrent: int | None = None
    allowed_models: tuple[str, ...] | None = None
    """Served model names the key may use; None: all."""
    fair_share: int = 1
    """The key's weight in a saturated batch (running requests per key in this proportion)."""

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


class ApiKeyStore:
    def __init__(self) -> None:
        self._entries: list[tuple[bytes, ApiKeyIdentity]] = []

    def add(self, key: str, identity: ApiKeyIdentity) -> None:
        from pagedllm.log_redaction import register_secret

        register_secret(key)  # never in a log line either (a "sha256:" digest is harmless)
        digest = _digest_of(key)
        if any(hmac.compare_digest(digest, d) for d, _ in self._entries):
            raise ValueError(f"key of {identity.name!r} is listed twice")
        if any(identity.name == i.name for _, i in self._entries):
            raise ValueError(f"name {identity.name!r} is given to two keys")
        self._entries.append((digest, identity))

    def lookup(self, key: str) -> ApiKeyIdentity | None:
        """The key's identity, or None. Constant time in which key matched."""
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for stored, identity in self._entries:
            if hmac.compare_digest(digest, stored):
                found = identity
        return found

    def identities(self) -> list[ApiKeyIdentity]:
        return [identity for _, identity in self._entries]

    def __len__(self) -> int:
        return len(self._entries)


def load_api_keys(path: str) -> ApiKeyStore:
    """Parse and check the file; a ValueError names what is wrong (never the key)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    data = _parse(text, os.path.splitext(path)[1].lower())
    if not isinstance(data, dict) or not data:
        raise ValueError("must map each key to its settings (a non-empty object)")
    store = ApiKeyStore()
    for number, (key, entry) in enumerate(data.items(), 1):
        if not isinstance(key, str) or not key:
            raise ValueError(f"entry {number}: the key must be a non-empty string")
        store.add(key, parse_identity(entry, f"entry {number}"))
    return store


def parse_identity(entry: Any, where: str) -> ApiKeyIdentity:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: settings must be an object")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: `name` (a non-empty string) is required")
    for field_name in _LIMITS:
        value = entry.get(field_name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise ValueError(f"{where} ({name}): {field_name} must be a positive integer")
    models = entry.get("allowed_models")
    if models is not None and (not isinstance(models, list)
                               or not all(isinstance(m, str) for m in models)):
        raise ValueError(f"{where} ({name}): allowed_models must be a list of model names")
    share = entry.get("fair_share", 1)
    if not isinstance(share, int) or isinstance(share, bool) or not 1 <= share <= _MAX_FAIR_SHARE:
        raise ValueError(f"{where} ({name}): fair_share must be an integer from 1 to "
                         f"{_MAX_FAIR_SHARE}")
    return ApiKeyIdentity(name, *(entry.get(f) for f in _LIMITS),
                          tuple(models) if models is not None else None, share)


def _parse(text: str, ext: str) -> Any:
    if ext in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ValueError("a YAML keys file needs PyYAML (pip install pyyaml)") from e
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"not valid YAML: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e}") from e


def _digest_of(key: str) -> bytes:
    if key.startswith("sha256:"):
        try:
            digest = bytes.fromhex(key.removeprefix("sha256:"))
        except ValueError as e:
            raise ValueError("a sha256: key must be 64 hex digits") from e
        if len(digest) != 32:
            raise ValueError("a sha256: key must be 64 hex digits")
        return digest
    return hashlib.sha256(key.encode()).digest()
