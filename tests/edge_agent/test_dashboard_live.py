"""Every agent panel of the Grafana dashboard selects series of a live agent when filtered on one pipeline.

No Prometheus server runs here: each panel's selectors (`metric{label=~"..."}`) are matched against the
agent's own /metrics scrape, with the dashboard variables resolved as Grafana would ($pipeline = one
pipeline whose name differs from its model's, $model from edgefleet_pipeline_info, $instance = any).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from agent_support import sample, standalone_config, start_agent
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from rig import free_port

from edge_agent.app import Agent
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE
from protocols.binary import HEADER_LENGTH, encode_request
from protocols.pipeline import PipelineSpec

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "edgefleet-dashboard.json"
SELECTOR = re.compile(r"(edgefleet_\w+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|=)\s*"([^"]*)"')
Samples = list[tuple[str, dict[str, str]]]
PROM_HINT = "needs prometheus and promtool (Debian: apt-get install prometheus)"


def _samples(text: str) -> Samples:
    return [(s.name, s.labels) for family in text_string_to_metric_families(text) for s in family.samples]


def _select(samples: Samples, selector: str, variables: dict[str, str]) -> Samples:
    match = SELECTOR.fullmatch(selector)
    assert match is not None, selector
    name, body = match.groups()
    found = [(n, labels) for n, labels in samples if n == name]
    for label, _, raw in MATCHER.findall(body):
        if label == "instance":
            continue  # added by Prometheus at scrape time
        pattern = raw
        for var, value in variables.items():
            pattern = pattern.replace(f"${var}", value)
        found = [(n, labels) for n, labels in found if re.fullmatch(pattern, labels.get(label, ""))]
    return found


async def test_every_agent_panel_has_series_for_a_selected_pipeline(aiohttp_client: Any) -> None:
    config = standalone_config(
        pipelines=[PipelineSpec(name="collision", model="tiny-cnn", priority="safety", deadline_ms=500)]
    )
    agent = Agent(config)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(agent.http)
    await agent.startup
    body, length = encode_request(inputs={"input": sample("tiny-cnn", 2)})
    for _ in range(3):
        resp = await client.post("/v2/models/collision/infer", data=body, headers={HEADER_LENGTH: str(length)})
        assert resp.status == 200
    samples = _samples(await (await client.get("/metrics")).text())
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    # $model: label_values(edgefleet_pipeline_info{model=~"$pipeline", ...}, name)
    infos = _select(samples, 'edgefleet_pipeline_info{model=~"collision"}', {})
    assert [labels["name"] for _, labels in infos] == ["tiny-cnn"]
    variables = {"pipeline": "collision", "model": "tiny-cnn"}
    checked = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for selector in SELECTOR.finditer(target["expr"]):
                if selector.group(1).startswith("edgefleet_hub_"):
                    continue  # the hub's panels
                assert _select(samples, selector.group(0), variables), f"{panel['title']}: {selector.group(0)}"
                checked += 1
    assert checked >= 8


PROMETHEUS_CONFIG = """
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: agent
    static_configs: [{{targets: ["{target}"]}}]
"""
AGENT_TOML = """
standalone = true
model_dirs = ["{packages}"]
trusted_keys = ["{key}"]
[http]
port = 0
[[pipelines]]
name = "collision"
model = "tiny-cnn"
priority = "standard"
deadline_ms = 2000
"""


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _query(base: str, expr: str) -> list[Any]:
    data = _get_json(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert data["status"] == "success", data
    result: list[Any] = data["data"]["result"]
    return result


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None, reason=PROM_HINT)
def test_dashboard_queries_in_a_real_prometheus_and_promtool_check_metrics(tmp_path: Path) -> None:
    """A real Prometheus scrapes a real agent; every agent panel's PromQL, filtered on one pipeline, returns
    series; and `promtool check metrics` accepts the agent's exposition."""
    (tmp_path / "agent.toml").write_text(AGENT_TOML.format(packages=PACKAGES_DIR, key=ZOO_PUBLIC_KEY_FILE))
    agent = start_agent(["serve", "--config", str(tmp_path / "agent.toml")])
    prometheus = None
    try:
        target = agent.url.removeprefix("http://")
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(PROMETHEUS_CONFIG.format(target=target))
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        body, length = encode_request(inputs={"input": sample("tiny-cnn", 2)})
        request = urllib.request.Request(
            f"{agent.url}/v2/models/collision/infer", data=body, headers={HEADER_LENGTH: str(length)}
        )
        deadline = time.monotonic() + 60
        while True:  # traffic until Prometheus has several scrapes of it
            with urllib.request.urlopen(request, timeout=10) as resp:
                assert resp.status == 200
            time.sleep(0.2)
            try:
                seen = _query(base, 'count_over_time(edgefleet_requests_total{model="collision"}[1m])')
            except (OSError, AssertionError):
                seen = []
            if seen and float(seen[0]["value"][1]) >= 6:
                break
            assert time.monotonic() < deadline, "Prometheus never scraped the agent"
        with urllib.request.urlopen(f"{agent.url}/metrics", timeout=10) as resp:
            exposition = resp.read()
        check = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        match = urllib.parse.urlencode({"match[]": 'edgefleet_pipeline_info{model=~"collision"}'})
        models = _get_json(f"{base}/api/v1/label/name/values?{match}")["data"]
        assert models == ["tiny-cnn"]
        variables = {"$pipeline": "collision", "$model": "tiny-cnn", "$instance": ".*", "$__rate_interval": "30s"}
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        checked = 0
        for panel in dashboard["panels"]:
            for item in panel.get("targets", []):
                expr = item["expr"]
                if "edgefleet_hub_" in expr:
                    continue
                for var, value in variables.items():
                    expr = expr.replace(var, value)
                assert _query(base, expr), f"{panel['title']}: no series for {expr}"
                checked += 1
        assert checked >= 8
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(20)
        assert agent.stop() == 0, "".join(agent.output)
