"""Fixtures of the hub's tests: a database per test (SQLite and PostgreSQL), a hub, a broker on its CA."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from hub_support import hub_config
from rig import Mosquitto
from sqlalchemy.engine import make_url

from cloud_hub.app import Hub, serve_hub
from cloud_hub.pki import HubIdentity

PG_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _pg_admin(sql: str) -> None:
    try:
        conn = await asyncpg.connect(_asyncpg_dsn(PG_URL), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_URL} ({exc}). The hub's store tests need it: start it, or "
            "point EDGEFLEET_TEST_PG at one (e.g. postgresql://user@host:5432/db)."
        )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest_asyncio.fixture(params=DATABASES)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """One database URL per backend: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
        return
    name = f"edgefleet_test_{secrets.token_hex(6)}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_URL).set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class BrokerFiles:
    """What tests/rig's Mosquitto reads from a `pki`: here certificates from the hub's own CA."""

    cafile: Path
    server_certfile: Path
    server_keyfile: Path


def hub_broker_files(identity: HubIdentity, directory: Path) -> BrokerFiles:
    """The broker's server certificate issued by the hub CA (as `cloud-hub pki broker-cert` does)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "broker.pem", directory / "broker.key"
    identity.issue_keypair("edgefleet-broker", cert, key, server=True, hosts=("localhost", "127.0.0.1"))
    return BrokerFiles(identity.paths.ca_cert, cert, key)


@pytest.fixture
def hub_data_dir(tmp_path: Path) -> Path:
    """The hub's data dir (CA created in it by the first Hub or by `hub_identity`)."""
    return tmp_path / "hub-data"


@pytest.fixture
def hub_identity(hub_data_dir: Path) -> HubIdentity:
    """The hub's identity, created before the hub starts so a broker can use its CA."""
    return HubIdentity.bootstrap(hub_data_dir, ("localhost", "127.0.0.1"))


@pytest.fixture
def hub_broker(
    tmp_path: Path, mosquitto_bin: str, hub_identity: HubIdentity, hub_data_dir: Path
) -> Iterator[Mosquitto]:
    """The production mTLS broker config (deploy/mosquitto) trusting the hub CA, with the hub's CRL."""
    files = hub_broker_files(hub_identity, tmp_path / "broker-pki")
    # An empty CRL so mosquitto starts with `crlfile` set, as in production after the hub's first start.
    hub_identity.ca.write_crl(hub_identity.paths.crl, [])
    broker = Mosquitto(
        "mtls",
        tmp_path / "mosquitto-hub",
        pki=files,  # type: ignore[arg-type]  # duck-typed: the rig reads cafile/server_certfile/server_keyfile
        crlfile=hub_identity.paths.crl,
        binary=mosquitto_bin,
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest_asyncio.fixture
async def hub(hub_data_dir: Path, db_url: str) -> AsyncIterator[Hub]:
    """A hub serving HTTPS on a free port, no broker."""
    async with serve_hub(hub_config(hub_data_dir, db_url), ingest=False) as running:
        yield running
