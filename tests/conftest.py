"""Fixtures shared by every test folder: the test PKI and real mosquitto brokers (tests/rig)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rig import INSTALL_HINT, Flavour, Mosquitto, MosquittoFactory, TestPKI, find_mosquitto


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    """Path of the mosquitto binary; fails (never skips) when it is not installed."""
    found = find_mosquitto()
    if found is None:
        pytest.fail(INSTALL_HINT)
    return found


@pytest.fixture(scope="session")
def mqtt_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """Session-wide test CA, loopback server certificate and rogue CA; `.client(cn)` issues client certs."""
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def mosquitto_factory(tmp_path: Path, mosquitto_bin: str, mqtt_pki: TestPKI) -> Iterator[MosquittoFactory]:
    """Start brokers: `mosquitto_factory("mtls", crlfile=..., prefix=...)`; all are stopped at teardown."""
    started: list[Mosquitto] = []

    def factory(flavour: Flavour = "plain", **opts: Any) -> Mosquitto:
        workdir = tmp_path / f"mosquitto-{len(started)}-{flavour}"
        broker = Mosquitto(flavour, workdir, pki=mqtt_pki, binary=mosquitto_bin, **opts)
        started.append(broker)
        return broker.start()

    yield factory
    for broker in reversed(started):
        broker.stop()


@pytest.fixture
def mosquitto_plain(mosquitto_factory: MosquittoFactory) -> Mosquitto:
    """Anonymous MQTT over TCP on a free loopback port."""
    return mosquitto_factory("plain")


@pytest.fixture
def mosquitto_tls(mosquitto_factory: MosquittoFactory) -> Mosquitto:
    """Anonymous MQTT over TLS (server certificate from `mqtt_pki`)."""
    return mosquitto_factory("tls")


@pytest.fixture
def mosquitto_mtls(mosquitto_factory: MosquittoFactory) -> Mosquitto:
    """The production config (deploy/mosquitto): client certificates required, CN as username, ACL."""
    return mosquitto_factory("mtls")
