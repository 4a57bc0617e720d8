"""The fleet side of a running agent: the MQTT link plus telemetry, as one owned background service."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from edge_agent.config import FleetConfig
from edge_agent.fleet.device_load import DeviceLoadSource, ProbeLoadSource, hardware_summary
from edge_agent.fleet.identity import DeviceIdentity
from edge_agent.fleet.mqtt_link import DeviceLink, LinkSettings
from edge_agent.fleet.seq import SequenceCounter
from edge_agent.fleet.spool import Spool
from edge_agent.fleet.telemetry import ModelsSource, TelemetryReporter
from edge_agent.serving.stats import PipelineStatsSource
from protocols.messages import DeviceBirth, HardwareSummary

log = logging.getLogger(__name__)

SPOOL_DIR = "telemetry-spool"
SEQ_FILE = "telemetry.seq"


def _default_load() -> DeviceLoadSource:
    # NVML (pynvml) only on hosts where it is installed; Jetson sysfs is read by the probe regardless.
    from edge_agent import probe

    return ProbeLoadSource(nvml=probe.load_nvml())


def agent_version() -> str:
    """The installed edgefleet version ("0+unknown" when running from a source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgefleet")
    except PackageNotFoundError:
        return "0+unknown"


class FleetService:
    """Owns an DeviceLink and a TelemetryReporter sharing one boot id; an async context manager."""

    def __init__(
        self,
        settings: LinkSettings,
        state_dir: Path,
        *,
        stats: PipelineStatsSource,
        interval_s: float,
        hardware: HardwareSummary,
        load: DeviceLoadSource | None = None,
        models: ModelsSource | None = None,
        pipelines: Callable[[], Sequence[str]] | None = None,
        spool_max_reports: int = 8640,
        spool_max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.boot_id = uuid.uuid4().hex
        self.hardware = hardware
        self._models = models
        self._pipelines = pipelines
        self._interval_s = interval_s
        self.link = DeviceLink(settings, self._birth)
        self.telemetry = TelemetryReporter(
            self.link,
            stats=stats,
            load=load or _default_load(),
            spool=Spool(state_dir / SPOOL_DIR, max_records=spool_max_reports, max_bytes=spool_max_bytes),
            seq=SequenceCounter(state_dir / SEQ_FILE),
            interval_s=interval_s,
            models=models,
            boot_id=self.boot_id,
        )

    @classmethod
    def from_config(
        cls,
        fleet: FleetConfig,
        state_dir: Path,
        *,
        stats: PipelineStatsSource,
        load: DeviceLoadSource | None = None,
        models: ModelsSource | None = None,
        pipelines: Callable[[], Sequence[str]] | None = None,
        hardware: HardwareSummary | None = None,
    ) -> FleetService:
        """Build from the provisioned identity and `[fleet]`'s overrides (blocking: reads files)."""
        identity = DeviceIdentity.load(fleet.identity_dir)
        settings = LinkSettings.from_identity(
            identity, broker_url=fleet.broker_url, topic_prefix=fleet.topic_prefix, keepalive_s=fleet.keepalive_s
        )
        if hardware is None:
            from edge_agent import probe

            hardware = hardware_summary(probe.probe_hardware())
        return cls(
            settings,
            state_dir,
            stats=stats,
            interval_s=fleet.telemetry_interval_s or identity.telemetry_interval_s,
            hardware=hardware,
            load=load,
            models=models,
            pipelines=pipelines,
            spool_max_reports=fleet.spool_max_reports,
            spool_max_bytes=fleet.spool_max_bytes,
        )

    def _birth(self) -> DeviceBirth:
        return DeviceBirth(
            device_id=self.link.settings.device_id,
            boot_id=self.boot_id,
            agent_version=agent_version()[:64],
            sent_at=time.time(),
            hardware=self.hardware,
            models=tuple(self._models()) if self._models else (),
            pipelines=tuple(self._pipelines()) if self._pipelines else (),
            telemetry_interval_s=self._interval_s,
        )

    async def start(self) -> None:
        """Start connecting and reporting in the background; returns at once (serving never waits)."""
        self.link.start()
        self.telemetry.start()

    async def aclose(self) -> None:
        """Stop telemetry (spool kept on disk), then say goodbye on `state` and disconnect."""
        await self.telemetry.aclose()
        await self.link.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
