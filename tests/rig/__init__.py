"""Test rig: a throw-away PKI and real mosquitto brokers started as child processes."""

from .mosquitto import (
    DEFAULT_PREFIX,
    FLAVOURS,
    HUB_USERNAME,
    INSTALL_HINT,
    Flavour,
    Mosquitto,
    MosquittoError,
    MosquittoFactory,
    MosquittoNotInstalledError,
    find_mosquitto,
    free_port,
    require_mosquitto,
)
from .pki import CertificateAuthority, TestPKI, client_ssl_context

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
