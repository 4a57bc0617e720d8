"""The fault rig with hub replicas on PostgreSQL: N `cloud-hub serve` processes on one data dir (one CA, one
operator token; each replica takes its own MQTT client id from the data dir) and one fresh database, sharing
the broker's `$share` telemetry subscription. Stored telemetry is read from PostgreSQL."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import asyncpg
from fault_support import FaultRig
from sqlalchemy.engine import make_url

from cloud_hub.cli.client import HubClient
from deploy.local import stack
from deploy.local.broker import start_broker
from deploy.local.procs import Child, StackError, free_port

PG_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class ReplicaRig(FaultRig):
    """`replicas` hubs on a PostgreSQL database made for the test (dropped in `drop_database`)."""

    def __init__(self, workdir: Path, replicas: int = 2) -> None:
        super().__init__(workdir)
        self.replicas = replicas
        self.db_name = f"edgefleet_faults_{secrets.token_hex(6)}"
        self.db_url = make_url(PG_URL).set(drivername="postgresql+asyncpg", database=self.db_name)
        self.hubs: list[Child] = []

    async def start(self) -> None:
        await self._admin(f'CREATE DATABASE "{self.db_name}"')
        tls = self.workdir / "tls"
        await stack.make_pki(self.sup, self.hub_dir, tls)
        self.broker, self.broker_port = await start_broker(self.sup, self.workdir, tls, "edgefleet/v1")
        for i in range(self.replicas):
            child, url = await self._start_replica(i)
            self.hubs.append(child)
            if i == 0:
                self.hub, self.hub_url = child, url
        self.client = HubClient.resolve(self.hub_dir, self.hub_url, None, None)
        await stack.push_models(self.sup, self.hub_dir)

    async def _start_replica(self, i: int) -> tuple[Child, str]:
        db = self.db_url.render_as_string(hide_password=False)
        for attempt in range(3):
            argv = stack.hub_cli(self.hub_dir, *stack.hub_serve_args(free_port(), self.broker_port), "--db", db)
            child = self.sup.spawn(f"hub-{i}-{attempt}", argv)
            try:
                found = await child.wait_for(stack.READY_HUB, 60)
            except StackError:
                continue  # most likely the port was taken meanwhile
            return child, found.group(1)
        raise StackError(f"hub replica {i} did not start")

    async def stored(self, device_id: str) -> list[tuple[str, int, float, float]]:
        """(boot_id, seq, sent_at, received_at) of every stored report of `device_id`, by seq."""
        conn = await asyncpg.connect(_dsn(self.db_url.render_as_string(hide_password=False)), timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT boot_id, seq, sent_at, received_at FROM telemetry WHERE device_id = $1 ORDER BY seq",
                device_id,
            )
        finally:
            await conn.close()
        return [(str(r[0]), int(r[1]), float(r[2]), float(r[3])) for r in rows]

    async def drop_database(self) -> None:
        """Drop the test's database (after the hubs are stopped)."""
        await self._admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    @staticmethod
    async def _admin(sql: str) -> None:
        conn = await asyncpg.connect(_dsn(PG_URL), timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
