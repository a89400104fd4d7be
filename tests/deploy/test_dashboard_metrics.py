"""Every metric the Grafana dashboard, the HPA's adapter rule and the docs query is one a real
`pagedllm serve` exports at /metrics (names compared without _total/_bucket/_sum/_count)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "pagedllm.json"
ADAPTER_RULES = ROOT / "deploy" / "kubernetes" / "prometheus-adapter-rules.yaml"
METRIC_NAME = re.compile(r"pagedllm:[A-Za-z0-9_:]+")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return queries


@pytest.fixture(scope="module")
def exported(shared_tiny_server) -> set[str]:
    # One request so that every histogram has observations (the names exist regardless).
    httpx.post(f"{shared_tiny_server.url}/v1/completions", timeout=60,
               json={"model": "tiny", "prompt": "Hello", "max_tokens": 4})
    text = httpx.get(f"{shared_tiny_server.url}/metrics").text
    return {base_name(sample.name) for family in text_string_to_metric_families(text)
            for sample in family.samples}


def test_dashboard_queries_only_exported_metrics(exported):
    queried = {base_name(n) for q in dashboard_queries() for n in METRIC_NAME.findall(q)}
    assert len(queried) >= 10  # the regex found the dashboard's metrics
    assert queried <= exported, sorted(queried - exported)


def test_every_panel_has_a_query_and_unique_id():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(METRIC_NAME.search(t["expr"]) for t in panel["targets"])
        assert panel["datasource"]["uid"] == "${datasource}"


def test_hpa_adapter_rule_reads_an_exported_metric(exported):
    text = ADAPTER_RULES.read_text()
    (series,) = {base_name(n) for n in METRIC_NAME.findall(text)}
    assert series in exported and series == "pagedllm:num_requests_waiting"


def test_a_misspelled_metric_is_caught(exported):
    assert base_name("pagedllm:generation_tokens_total") in exported
    assert "pagedllm:generation_token" not in exported
