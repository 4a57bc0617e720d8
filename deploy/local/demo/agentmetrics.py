"""The agents' own view of each pipeline, scraped from their Prometheus `/metrics` at the end of the run.

The load generator measures what an app sees, which on a small shared machine includes the generator's own
event loop and the OS scheduling five busy processes on few cores. The agent measures from body read to
response, which is what its deadline covers; the summary shows both.
"""

from __future__ import annotations

import math
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

LATENCY = "edgefleet_request_latency_seconds"
ROUTES = "edgefleet_routes"


def pipeline_view(text: str, pipeline: str, deadline_ms: int) -> dict[str, Any]:
    """Requests, those answered within `deadline_ms` (largest bucket <= deadline) and routes of one pipeline."""
    total = within = 0
    within_le = -math.inf
    routes: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != pipeline:
                continue
            if sample.name == f"{LATENCY}_count":
                total = int(sample.value)
            elif sample.name == f"{LATENCY}_bucket":
                le = float(sample.labels["le"])
                if within_le < le <= deadline_ms / 1000:
                    within_le, within = le, int(sample.value)
            elif sample.name == f"{ROUTES}_total":
                routes[sample.labels["route"]] = int(sample.value)
    return {
        "requests": total,
        "within_deadline": within,
        "bucket_le_ms": None if within_le == -math.inf else within_le * 1000,
        "routes": routes,
    }


async def scrape(session: aiohttp.ClientSession, url: str) -> str | None:
    """The text of `url`/metrics, None if the agent does not answer."""
    try:
        async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return await resp.text() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None
