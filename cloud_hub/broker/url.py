"""Broker addresses and the errors of the hub's broker link."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from cloud_hub.errors import ConfigError, HubError

# CONNACK reason codes after which retrying with the same identity cannot help.
AUTH_FAILURES = frozenset({134, 135, 138, 140})  # bad user/password, not authorized, banned, bad auth method


class BrokerLinkError(HubError):
    """The broker refused or dropped the link."""


class AuthenticationFailed(BrokerLinkError):
    """The broker refused our identity; the link stops retrying."""


@dataclass(frozen=True)
class BrokerUrl:
    """mqtt://host:port (plain, development) or mqtts://host:port (TLS)."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """Parse a broker URL; ConfigError if it is not mqtt:// or mqtts://."""
        parts = urlsplit(url)
        if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
            raise ConfigError(f"broker URL {url!r} must be mqtts://host[:port] or mqtt://host[:port]")
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, parts.port or (8883 if tls else 1883), tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"
