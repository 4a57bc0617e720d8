"""The hub's telemetry summary: what it keeps of each load report per pipeline, typed, with its one
JSON encode/decode pair.

Stored in the telemetry table (`pipelines`) and in a device's `last_load.pipelines`, served as is by the
operator API, read by rollout health gates and the CLI. The JSON keys are part of the operator API and
never change: {pipeline: {model, version, rps, p50_ms, p99_ms, errors, local, cloud, rejected, expired}}.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic_core

from protocols.messages import LoadReport


# Not frozen: built for every report on the ingest hot path, and a frozen dataclass's __init__ costs
# about 3x (object.__setattr__ per field). Treat it as immutable.
@dataclass(slots=True)
class PipelineSummary:
    """One pipeline of one load report (field names are the JSON keys)."""

    model: str | None = None
    version: str | None = None
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    local: int = 0
    cloud: int = 0
    rejected: int = 0
    expired: int = 0

    @property
    def requests(self) -> int:
        """Requests that reached the pipeline, wherever they went."""
        return self.local + self.cloud + self.rejected + self.expired


# pipeline name -> its summary
TelemetrySummary = dict[str, PipelineSummary]


def summarize(report: LoadReport) -> TelemetrySummary:
    """What the hub keeps of a report per pipeline: enough for rollout health gates and fleet views."""
    return {
        p.name: PipelineSummary(
            model=p.model,
            version=p.version,
            rps=p.requests_per_s,
            p50_ms=p.p50_ms,
            p99_ms=p.p99_ms,
            errors=p.errors,
            local=p.routes.local,
            cloud=p.routes.cloud,
            rejected=p.routes.rejected,
            expired=p.routes.expired,
        )
        for p in report.pipelines
    }


def encode_summary(summary: TelemetrySummary) -> str:
    """JSON text of a summary, as stored and served (pydantic-core encodes the dataclasses directly)."""
    return pydantic_core.to_json(summary).decode()


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def decode_summary(raw: Mapping[str, Any] | None) -> TelemetrySummary:
    """A summary from its JSON form (a decoded dict); missing or null figures read as absent / zero."""
    return {
        name: PipelineSummary(
            model=p.get("model"),
            version=p.get("version"),
            rps=float(p.get("rps") or 0.0),
            p50_ms=_float(p.get("p50_ms")),
            p99_ms=_float(p.get("p99_ms")),
            errors=int(p.get("errors") or 0),
            local=int(p.get("local") or 0),
            cloud=int(p.get("cloud") or 0),
            rejected=int(p.get("rejected") or 0),
            expired=int(p.get("expired") or 0),
        )
        for name, p in (raw or {}).items()
    }
