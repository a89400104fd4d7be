"""`pagedllm collect-env`: the versions it reports are the ones installed, and secrets in the
environment are redacted (never printed)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import torch

from pagedllm.version import __version__

SECRET = "do-not-print-me-42"


def collect(*flags: str) -> str:
    env = {**os.environ, "PAGEDLLM_API_KEY": SECRET, "HF_TOKEN": SECRET,
           "PAGEDLLM_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "pagedllm.entrypoints.cli.main", "collect-env",
                             *flags], capture_output=True, text=True, env=env, timeout=120,
                            check=True)
    return result.stdout


def test_reports_the_installed_versions_and_redacts_secrets():
    out = collect("--json")
    info = json.loads(out)
    assert info["pagedllm"]["version"] == __version__
    assert info["python"]["version"] == platform.python_version()
    assert info["torch"]["version"] == torch.__version__
    assert info["torch"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["packages"]["openai"] == importlib.metadata.version("openai")
    assert info["cpu"]["logical_cores"] == os.cpu_count()
    assert info["environment"]["PAGEDLLM_NUM_THREADS"] == "1"
    assert info["environment"]["PAGEDLLM_API_KEY"] == "<redacted>"
    assert SECRET not in out
    text = collect()
    assert "== cpu ==" in text and f"version:             {__version__}" in text
    assert SECRET not in text
