"""Test rig: a throw-away PKI (pki.py), real mosquitto brokers (deploy/local/broker.py), small ONNX builders.

The broker is the local stack's (`deploy.local.broker`): one implementation for the tests, the demo and the
benchmarks, re-exported here under the names the tests import.
"""

from typing import Any, Protocol

from deploy.local.broker import (
    INSTALL_HINT,
    Mosquitto,
    MosquittoNotInstalledError,
    find_mosquitto,
    require_mosquitto,
)
from deploy.local.broker_config import DEFAULT_PREFIX, FLAVOURS, HUB_USERNAME, Flavour, MosquittoError
from deploy.local.procs import free_port

from .pki import CertificateAuthority, TestPKI, client_ssl_context


class MosquittoFactory(Protocol):
    """The `mosquitto_factory` fixture: start a broker of a flavour; teardown stops it."""

    def __call__(self, flavour: Flavour = "plain", **opts: Any) -> Mosquitto:
        """Start and return a broker; `opts` are `Mosquitto`'s keyword arguments."""
        ...


__all__ = [
    "DEFAULT_PREFIX",
    "FLAVOURS",
    "HUB_USERNAME",
    "INSTALL_HINT",
    "CertificateAuthority",
    "Flavour",
    "Mosquitto",
    "MosquittoError",
    "MosquittoFactory",
    "MosquittoNotInstalledError",
    "TestPKI",
    "client_ssl_context",
    "find_mosquitto",
    "free_port",
    "require_mosquitto",
]
