"""Every agent panel of the Grafana dashboard selects series of a live agent when filtered on one pipeline.

No Prometheus server runs here: each panel's selectors (`metric{label=~"..."}`) are matched against the
agent's own /metrics scrape, with the dashboard variables resolved as Grafana would ($pipeline = one
pipeline whose name differs from its model's, $model from edgefleet_pipeline_info, $instance = any).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from agent_support import sample, standalone_config
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.app import Agent
from protocols.binary import HEADER_LENGTH, encode_request
from protocols.pipeline import PipelineSpec

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "edgefleet-dashboard.json"
SELECTOR = re.compile(r"(edgefleet_\w+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|=)\s*"([^"]*)"')
Samples = list[tuple[str, dict[str, str]]]


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
