"""Reading and checking a PEFT LoRA adapter on disk, without torch and without loading weights.

An adapter directory holds `adapter_config.json` and `adapter_model.safetensors` (PEFT's
`save_pretrained`). Only safetensors is read: a pickled `adapter_model.bin` is refused, never
unpickled. The checks here run where the request arrives (API process or LLM), so a bad adapter
is the caller's ValueError and never reaches the engine's step loop:

    unknown path / no safetensors        ValueError naming the path
    rank > max_lora_rank                 ValueError naming both
    embeddings, lm_head, modules_to_save,
    DoRA, trained biases, per-module ranks  ValueError naming what is unsupported
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

from pagedllm.lora.request import LoRARequest

SUPPORTED_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The checkpoint projections an adapter may target (our fused qkv_proj / gate_up_proj are
reached through their checkpoint shards, per the model's packed_modules_mapping)."""

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class LoRATensorInfo:
    """One lora_A / lora_B tensor of the adapter file."""

    module: str
    """The base model's module name, PEFT's prefix removed: model.layers.0.self_attn.q_proj."""
    kind: str
    """"A" ([rank, in]) or "B" ([out, rank])."""
    key: str
    """The tensor's key in the safetensors file."""
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PEFTAdapter:
    """An adapter's config and its tensors' names and shapes (no weights)."""

    path: str
    rank: int
    lora_alpha: float
    use_rslora: bool
    tensors: tuple[LoRATensorInfo, ...]

    @property
    def scaling(self) -> float:
        """What B A is multiplied by: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.lora_alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @property
    def weights_path(self) -> str:
        return os.path.join(self.path, WEIGHTS_NAME)

    @property
    def modules(self) -> list[str]:
        return sorted({t.module for t in self.tensors})


def read_adapter(lora: LoRARequest, max_lora_rank: int) -> PEFTAdapter:
    """Read and check the adapter of `lora`; ValueError (naming the adapter) if it cannot run."""
    name = lora.lora_name
    path = lora.lora_path
    config_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise ValueError(f"LoRA {name!r}: no {CONFIG_NAME} in {path!r} (not a PEFT adapter "
                         f"directory, or it does not exist)")
    if not os.path.isfile(os.path.join(path, WEIGHTS_NAME)):
        raise ValueError(f"LoRA {name!r}: {path!r} has no {WEIGHTS_NAME} (only safetensors "
                         f"adapters are loaded; pickled .bin files never are)")
    with open(config_path, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"LoRA {name!r}: {config_path} is not valid JSON: {e}") from None
    _check_config(name, config)
    tensors = _tensor_infos(name, os.path.join(path, WEIGHTS_NAME))
    rank = int(config["r"])
    adapter = PEFTAdapter(path, rank, float(config.get("lora_alpha", rank)),
                          bool(config.get("use_rslora", False)), tensors)
    _check_tensors(name, adapter, max_lora_rank)
    return adapter


def _check_config(name: str, config: dict) -> None:
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise ValueError(f"LoRA {name!r}: peft_type {peft_type!r} is not supported (LORA only)")
    if not isinstance(config.get("r"), int) or config["r"] < 1:
        raise ValueError(f"LoRA {name!r}: adapter_config.json needs an integer rank 'r' >= 1")
    unsupported = {
        "modules_to_save": bool(config.get("modules_to_save")),
        "use_dora": bool(config.get("use_dora")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "bias": config.get("bias", "none") not in ("none", None),
    }
    found = [key for key, present in unsupported.items() if present]
    if found:
        raise ValueError(f"LoRA {name!r}: {', '.join(found)} is not supported (only plain LoRA "
                         f"on {', '.join(SUPPORTED_TARGETS)})")
    targets = config.get("target_modules") or []
    if isinstance(targets, list):
        _check_targets(name, targets)


def _check_targets(name: str, targets: list[str]) -> None:
    bad = sorted({t.rsplit(".", 1)[-1] for t in targets} - set(SUPPORTED_TARGETS))
    if bad:
        raise ValueError(f"LoRA {name!r}: target modules {bad} are not supported (embeddings, "
                         f"lm_head and other layers cannot take an adapter; supported: "
                         f"{', '.join(SUPPORTED_TARGETS)})")


def _tensor_infos(name: str, path: str) -> tuple[LoRATensorInfo, ...]:
    infos = []
    for key, shape in read_safetensors_header(path).items():
        module, kind = _parse_key(name, key)
        infos.append(LoRATensorInfo(module, kind, key, shape))
    if not infos:
        raise ValueError(f"LoRA {name!r}: {path} holds no tensors")
    return tuple(infos)


def _parse_key(name: str, key: str) -> tuple[str, str]:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' -> (module, "A")."""
    stem = key.removeprefix(_PEFT_PREFIX)
    for kind in ("A", "B"):
        suffix = f".lora_{kind}.weight"
        if stem.endswith(suffix):
            return stem.removesuffix(suffix), kind
    raise ValueError(f"LoRA {name!r}: tensor {key!r} is not a lora_A/lora_B weight (embedding "
                     f"adapters, biases and modules_to_save are not supported)")


def _check_tensors(name: str, adapter: PEFTAdapter, max_lora_rank: int) -> None:
    _check_targets(name, [t.module for t in adapter.tensors])
    kinds: dict[str, set[str]] = {}
    for t in adapter.tensors:
        kinds.setdefault(t.module, set()).add(t.kind)
        rank = t.shape[0] if t.kind == "A" else t.shape[-1]
        if len(t.shape) != 2 or rank != adapter.rank:
            raise ValueError(f"LoRA {name!r}: {t.key} has shape {list(t.shape)}, which does not "
                             f"fit rank r={adapter.rank}")
    missing = [m for m, k in kinds.items() if k != {"A", "B"}]
    if missing:
        raise ValueError(f"LoRA {name!r}: {missing[0]} lacks its lora_A or lora_B weight")
    if adapter.rank > max_lora_rank:
        raise ValueError(f"LoRA {name!r} has rank {adapter.rank}, more than max_lora_rank="
                         f"{max_lora_rank} (raise --max-lora-rank)")


def check_adapter_shapes(name: str, adapter: PEFTAdapter, hf_config: object) -> None:
    """ValueError when the adapter's tensors do not fit a Llama-style model of `hf_config`
    (another base model's adapter), so that it is refused where the request arrives and not
    when the worker loads it. Models whose config lacks the dims are left to the worker."""
    dims = _projection_dims(hf_config)
    if dims is None:
        return
    layers = getattr(hf_config, "num_hidden_layers", None)
    for t in adapter.tensors:
        leaf = t.module.rsplit(".", 1)[-1]
        index = _layer_index(t.module)
        if layers is not None and index is not None and index >= layers:
            raise ValueError(f"LoRA {name!r}: {t.module} is past the model's {layers} layers")
        in_size, out_size = dims[leaf]
        size = t.shape[1] if t.kind == "A" else t.shape[0]
        expected = in_size if t.kind == "A" else out_size
        if size != expected:
            raise ValueError(f"LoRA {name!r}: {t.key} has shape {list(t.shape)}, but the model's "
                             f"{leaf} has {in_size} inputs and {out_size} outputs (an adapter "
                             f"of another base model?)")


def _projection_dims(config: object) -> dict[str, tuple[int, int]] | None:
    """(in, out) of each supported projection of a Llama-style config; None if unknown."""
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    inter = getattr(config, "intermediate_size", None)
    if not (isinstance(hidden, int) and isinstance(heads, int) and isinstance(inter, int)):
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
            "o_proj": (q, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}


def _layer_index(module: str) -> int | None:
    parts = module.split(".")
    for before, part in zip(parts, parts[1:]):
        if before == "layers" and part.isdigit():
            return int(part)
    return None


def read_safetensors_header(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's JSON header (the format: 8 bytes of
    little-endian header length, then the header); no tensor data is read."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER_BYTES:
            raise ValueError(f"{path} is not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path} is not a safetensors file (bad header)") from None
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
