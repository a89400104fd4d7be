"""Benchmark results: the JSON record (machine, command line, arguments, numbers), where it goes,
and the `pagedllm / peer = 1.23x` lines."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import sys
from datetime import datetime, timezone
from typing import Any

RESULTS_DIR = os.path.join("benchmarks", "results")
"""Default directory of result files, relative to the working directory (the repo root)."""
ENGINE = "pagedllm"


def add_output_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--output-json",
        default=None,
        help=f"result file (default: {RESULTS_DIR}/<bench>_<model>_<workload>_<date>.json)",
    )
    group.add_argument(
        "--plot", default=None, help="also draw the results as a PNG here (needs matplotlib)"
    )


def machine_info() -> dict[str, Any]:
    import torch

    from pagedllm.utils.system import physical_cores
    from pagedllm.version import __version__

    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pagedllm": __version__,
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def command_line(args: argparse.Namespace) -> str:
    """The command as typed: `argv` is set by the CLI's main(); else this process's argv."""
    argv = getattr(args, "argv", None)
    if argv is None:
        argv = sys.argv[1:]
    return shlex.join(["pagedllm", *argv])


def args_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments that are plain data (drops the handler and the raw argv)."""
    skip = {"func", "argv"}
    return {
        k: _json_safe(v)
        for k, v in vars(args).items()
        if k not in skip and isinstance(v, (str, int, float, bool, list, type(None)))
    }


def _json_safe(value: Any) -> Any:
    """inf / nan as strings: JSON has no such numbers."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def build_record(
    benchmark: str, args: argparse.Namespace, model: str, results: list[dict], **extra: Any
) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "model": model,
        "command": command_line(args),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "args": args_dict(args),
        **extra,
        "results": results,
    }


def default_output_path(benchmark: str, model: str, workload: str) -> str:
    """e.g. benchmarks/results/latency_smollm2-135m-instruct_bs1-8_in32_out128_20250101-1200.json"""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(RESULTS_DIR, f"{benchmark}_{slug(model)}_{workload}_{stamp}.json")


def slug(text: str) -> str:
    base = os.path.basename(text.rstrip("/")) or text
    base = re.sub(r"\.gguf$", "", base, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9.]+", "-", base.lower()).strip("-") or "model"


def write_record(record: dict[str, Any], path: str) -> str:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(f"wrote {path}", flush=True)
    return path


def ratios(ours: dict[str, Any], peer: dict[str, Any], metrics: list[str]) -> dict[str, float]:
    """ours / peer for each rate metric (tok/s, req/s) both have."""
    out = {}
    for metric in metrics:
        a, b = ours.get(metric), peer.get(metric)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
            out[metric] = a / b
    return out


def ratio_line(peer: str, values: dict[str, float], labels: dict[str, str]) -> str:
    """`pagedllm / hf_transformers = 1.23x (decode tok/s), 1.10x (prefill tok/s)`."""
    parts = [f"{values[m]:.2f}x ({labels.get(m, m)})" for m in values]
    return f"{ENGINE} / {peer} = " + (", ".join(parts) if parts else "n/a")
