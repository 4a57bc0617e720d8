"""The one assembly point of the hub: the core (identity, store, broker links, services, ingest) opened
and closed together, the HTTPS server around it, and `run` for `cloud-hub serve`."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from aiohttp import web

from cloud_hub.api import build_app
from cloud_hub.broker import BrokerLinks
from cloud_hub.config import HubConfig
from cloud_hub.dashboard import mount_dashboard
from cloud_hub.errors import ConfigError
from cloud_hub.files import write_atomic
from cloud_hub.fleet.claims import ClaimService
from cloud_hub.fleet.demand import PoolDemand
from cloud_hub.fleet.devices import DeviceService
from cloud_hub.fleet.drift import DriftMonitor
from cloud_hub.fleet.live import LiveFleet
from cloud_hub.fleet.provisioning import Provisioner, ProvisionSettings
from cloud_hub.fleet.ratelimit import FailureLimiter
from cloud_hub.fleet.tokens import OPERATOR_PREFIX, new_id, new_token, token_hash
from cloud_hub.ingest.service import IngestService
from cloud_hub.metrics import HubMetrics
from cloud_hub.pki import HubIdentity
from cloud_hub.registry import ModelRegistry
from cloud_hub.rollouts.desired import DesiredWriter
from cloud_hub.rollouts.evidence import Evidence
from cloud_hub.rollouts.orchestrator import Orchestrator
from cloud_hub.rollouts.service import RolloutService
from cloud_hub.store import Store, tokens
from protocols.topics import Topics

log = logging.getLogger(__name__)


class Hub:
    """Everything behind the API. `async with Hub(config) as hub:`; transports call its services.

    `ingest=False` leaves out telemetry ingest (no subscriptions); the hub still links to its brokers to
    publish desired state."""

    def __init__(self, config: HubConfig, *, ingest: bool = True) -> None:
        self.config = config
        self.url = config.hub_url()
        self.metrics = HubMetrics()
        self.fleet = LiveFleet()
        self.metrics.online_gauge(self.fleet.online_count)
        self.demand = PoolDemand(self.fleet)
        self.metrics.pool_demand(self.demand.figures)
        self.drift = DriftMonitor(self.fleet)  # issue 16: PSI per (device, pipeline, version), fleet/drift.py
        self.drift.register(self.metrics.registry)
        self.identity = HubIdentity.bootstrap(config.data_dir, self._server_names(), config.mqtt_identity)
        self.store = Store(config.db_url)
        self.token_hashes: set[str] = set()
        self.claims = ClaimService(self.store, self.url, self.identity.ca.fingerprint)
        self.devices = DeviceService(self.store, self.identity, self.fleet)
        broker = config.device_broker_url or (config.brokers[0] if config.brokers else "")
        self.provisioner = Provisioner(
            self.store,
            self.identity,
            self.fleet,
            ProvisionSettings(self.url, broker, config.topic_prefix, config.telemetry_interval_s),
        )
        self.claim_limiter = FailureLimiter()  # failed provisioning attempts per source address
        self.broker = BrokerLinks(config, self.identity, self.metrics)
        self.provisioner.registrar = self.devices.registrar = self.broker.registrar
        self.provisioner.write_crl = self.devices.write_crl
        self._syncs: set[asyncio.Task[None]] = set()
        if self.broker.registrar is not None:
            self.broker.on_link_up = self._sync_broker
        self.ingest = (
            IngestService(
                config,
                broker=self.broker,
                store=self.store,
                fleet=self.fleet,
                device_service=self.devices,
                metrics=self.metrics,
            )
            if ingest
            else None
        )
        # Issue 6: model registry, desired state and the rollout orchestrator (an owned task).
        self.registry = ModelRegistry(self.store, self.identity, self.url)
        # Desired state goes out on the broker links whether or not this hub ingests; with no broker
        # configured there is nothing to publish on: states stay unpublished until a hub with a broker retries them.
        publish = self.broker.publish_retained if config.brokers else None
        self.desired = DesiredWriter(self.store, Topics(config.topic_prefix), publish)
        # issue 16: the step gates read shadow comparisons and the drift monitor's profiles.
        evidence = Evidence(self.fleet, self.drift)
        self.orchestrator = Orchestrator(self.registry, self.desired, live=self.fleet, evidence=evidence)
        self.rollouts = RolloutService(self.orchestrator)

    def _sync_broker(self) -> None:
        """A broker link came (back) up: put its dynamic-security registry in step (a task of its own)."""
        task = asyncio.create_task(self.devices.sync_broker(), name="broker-registry-sync")
        self._syncs.add(task)
        task.add_done_callback(self._syncs.discard)

    def _server_names(self) -> tuple[str, ...]:
        names = ["localhost", "127.0.0.1", *self.config.server_names]
        if self.config.host not in {"0.0.0.0", "::", ""}:  # noqa: S104  # comparing, not binding
            names.append(self.config.host)
        if self.config.public_url:
            host = urlsplit(self.config.public_url).hostname
            if host:
                names.append(host)
        return tuple(dict.fromkeys(names))

    async def open(self) -> Self:
        """Open the store (migrating it), make the first operator token, write the CRL, link to the brokers
        (subscribed by ingest, or publish-only), start the orchestrator."""
        if not self.provisioner.settings.broker_url:
            log.warning("no --broker given: provisioning answers with an empty broker_url and ingest is off")
        await self.store.open()
        try:
            await self._first_operator_token()
            await self.devices.write_crl()
            if self.ingest is not None:
                await self.ingest.start()
            else:
                await self.broker.start()
            self.registry.artifacts.ensure()
            await self.orchestrator.start()
        except BaseException:
            if self.ingest is not None:
                await self.ingest.aclose()
            await self.broker.aclose()
            await self.store.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Stop the orchestrator and ingest (flushing its buffer), close the broker links, then the store."""
        await self.orchestrator.aclose()
        for task in list(self._syncs):
            task.cancel()
        if self.ingest is not None:
            await self.ingest.aclose()
        await self.broker.aclose()
        await self.store.aclose()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _first_operator_token(self) -> None:
        async with self.store.begin() as conn:
            if await tokens.count(conn) == 0:
                token = new_token(OPERATOR_PREFIX)
                await tokens.add(
                    conn, token_id=new_id("tok"), name="operator", token_hash=token_hash(token), now=time.time()
                )
                path = self.identity.paths.operator_token
                write_atomic(path, token.encode("ascii") + b"\n", 0o600)
                # Printed once to the operator's terminal, never logged.
                print(f"operator API token (shown once; also in {path}, mode 0600):\n  {token}", file=sys.stderr)
            self.token_hashes = await tokens.hashes(conn)
        if not self.token_hashes:
            raise ConfigError("no operator token in the database")

    def check_token(self, token: str) -> bool:
        """True if `token` is a known operator API token."""
        return token_hash(token) in self.token_hashes


@asynccontextmanager
async def serve_hub(config: HubConfig, *, ingest: bool = True) -> AsyncIterator[Hub]:
    """Open the hub and serve HTTPS on config.host:config.port until the context exits."""
    async with Hub(config, ingest=ingest) as hub:
        app = build_app(hub)
        mount_dashboard(app)  # issue 17: the operator dashboard under /ui/ on the same listener
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.host, config.port, ssl_context=hub.identity.server_ssl_context())
            await site.start()
            write_atomic(
                hub.identity.paths.hub_info,
                json.dumps({"url": hub.url, "ca_fingerprint": hub.identity.ca.fingerprint}).encode(),
                0o644,
            )
            log.info("hub serving on %s (CA fingerprint %s)", hub.url, hub.identity.ca.fingerprint)
            yield hub
        finally:
            await runner.cleanup()


async def run(config: HubConfig) -> None:
    """Serve until SIGINT/SIGTERM (`cloud-hub serve`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve_hub(config) as hub:
        print(f"edgefleet hub at {hub.url}  CA sha256 {hub.identity.ca.fingerprint}", flush=True)
        await stop.wait()
