"""The `[fleet]` section of the agent config: where the identity is and how the link behaves."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt


class FleetConfig(BaseModel):
    """Optional; without it (or with standalone = true) the agent runs with no fleet link."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    identity_dir: Path = Field(
        default=Path("/var/lib/edgefleet/identity"), description="Identity written by `edge-agent provision`."
    )
    telemetry_interval_s: PositiveFloat | None = Field(
        default=None, description="Seconds between load reports; None = the interval the hub gave at provisioning."
    )
    spool_max_reports: PositiveInt = Field(
        default=8640, description="Reports kept on disk while the broker is away (8640 = 24 h at 10 s); oldest dropped."
    )
    spool_max_bytes: PositiveInt = Field(default=64 * 1024 * 1024, description="Byte bound of the on-disk spool.")
    keepalive_s: PositiveInt = Field(
        default=30, description="MQTT keep-alive; the broker declares the device lost after 1.5x this."
    )
    topic_prefix: str | None = Field(default=None, description="Override of the prefix from provisioning.")
    broker_url: str | None = Field(
        default=None, description="Override of the broker from provisioning, mqtts://host:port."
    )
