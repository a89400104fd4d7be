"""Every YAML under deploy/ and docker/ parses; the Kubernetes objects validate against the
Kubernetes JSON schemas (kubernetes-validate ships them, no network) and fit together: probes on
/health, the Service and HPA point at the Deployment, the keys file is mounted where the flag
reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
YAML_FILES = sorted([*ROOT.glob("deploy/**/*.y*ml"), *ROOT.glob("docker/*.y*ml")])
K8S_VERSION = "1.30"


def _objects() -> dict[str, dict]:
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


OBJECTS = _objects()


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_kubernetes_schema(name):
    validate = pytest.importorskip("kubernetes_validate")
    validate.validate(OBJECTS[name], K8S_VERSION, strict=True)


def test_schema_check_can_fail():
    validate = pytest.importorskip("kubernetes_validate")
    broken = yaml.safe_load((K8S / "deployment.yaml").read_text())
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = []
    with pytest.raises(validate.ValidationError):
        validate.validate(broken, K8S_VERSION, strict=True)
    del broken["spec"]["selector"]
    with pytest.raises(validate.ValidationError):
        validate.validate(broken, K8S_VERSION, strict=True)


def _container() -> dict:
    return OBJECTS["Deployment/pagedllm"]["spec"]["template"]["spec"]["containers"][0]


def test_probes_use_health_on_the_serving_port():
    container = _container()
    (port,) = container["ports"]
    assert port["containerPort"] == 8000  # the image's --port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and get["port"] in (port["name"], 8000)


def test_service_and_hpa_target_the_deployment():
    deployment = OBJECTS["Deployment/pagedllm"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = OBJECTS["Service/pagedllm"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == _container()["ports"][0]["name"]
    hpa = OBJECTS["HorizontalPodAutoscaler/pagedllm"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "pagedllm")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "pagedllm_num_requests_waiting"


def test_api_keys_configmap_is_mounted_where_the_flag_reads_it(tmp_path):
    container = _container()
    flag = next(a for a in container["args"] if a.startswith("--api-keys-file="))
    path = Path(flag.split("=", 1)[1])
    mount = next(m for m in container["volumeMounts"] if path.is_relative_to(m["mountPath"]))
    volume = next(v for v in OBJECTS["Deployment/pagedllm"]["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    configmap = OBJECTS[f"ConfigMap/{volume['configMap']['name']}"]
    keys_text = configmap["data"][path.name]
    # The file is one the server's loader accepts (and holds digests, not keys in clear).
    api_keys = pytest.importorskip("pagedllm.entrypoints.openai.api_keys")
    keys_file = tmp_path / path.name
    keys_file.write_text(keys_text)
    api_keys.load_api_keys(str(keys_file))
    assert all(key.startswith("sha256:") for key in yaml.safe_load(keys_text))
