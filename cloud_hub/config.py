"""The hub's configuration: a TOML file (`cloud-hub serve --config hub.toml`), flags on top."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError

from cloud_hub.errors import ConfigError
from protocols.topics import DEFAULT_PREFIX

DEFAULT_DATA_DIR = Path(os.environ.get("EDGEFLEET_HUB_DATA_DIR", "~/.local/share/edgefleet/hub")).expanduser()


class HubConfig(BaseModel):
    """Everything `cloud-hub serve` needs; defaults fit one hub on one host with SQLite."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="CA, keys, tokens, CRL and the SQLite file.")
    database_url: str | None = Field(
        default=None, description="sqlite:///PATH or postgresql://...; default SQLite file in data_dir."
    )
    host: str = Field(default="127.0.0.1", description="HTTPS bind address.")
    port: int = Field(default=8443, ge=0, le=65535, description="HTTPS port (0 = any free port).")
    public_url: str | None = Field(
        default=None, description="https://host:port devices and the CLI use; default from host and port."
    )
    server_names: tuple[str, ...] = Field(
        default=(), description="Extra DNS names / IPs for the HTTPS certificate's SAN."
    )
    brokers: tuple[str, ...] = Field(default=(), description="Broker URLs the hub ingests from (mqtts://host:port).")
    device_broker_url: str | None = Field(
        default=None, description="Broker URL handed to devices at provisioning; default the first of `brokers`."
    )
    broker_cafile: Path | None = Field(
        default=None, description="CA that signed the brokers' server certificates; default the hub CA."
    )
    topic_prefix: str = Field(default=DEFAULT_PREFIX, description="MQTT topic prefix.")
    share_group: str = Field(default="edgefleet-hub", description="Shared-subscription group of the replicas.")
    telemetry_interval_s: PositiveFloat = Field(default=10.0, description="Load report period given to devices.")
    mqtt_keepalive_s: PositiveInt = Field(default=30, description="Keepalive of the hub's own MQTT link.")
    mqtt_client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="MQTT client id of this replica; default edgefleet-hub-<random>, kept in data_dir/mqtt-client-id.",
    )
    mqtt_identity: str = Field(
        default="edgefleet-hub",
        pattern=r"^edgefleet-hub(-[a-z0-9][a-z0-9-]{0,40})?$",
        description="CN of this replica's MQTT client certificate; the broker uses it as username and client id "
        "(use_username_as_clientid), so every replica needs its own (edgefleet-hub, edgefleet-hub-2, ...), "
        "each listed in the broker's ACL.",
    )
    broker_authz: Literal["acl", "dynsec"] = Field(
        default="dynsec",
        description="How the brokers authorise: mosquitto's dynamic-security plugin (the shipped broker config), "
        "whose registry the hub keeps (a role per device; SUBSCRIBE and $share filters checked; a revoked "
        "device's client deleted, which disconnects it), or the brokers' own acl_file (weaker: SUBSCRIBE not "
        "authorised; the hub cuts a revoked device off by taking its client id over). docs/security.md.",
    )
    mqtt_session_expiry_s: int = Field(
        default=86_400,
        ge=0,
        le=4_294_967_295,
        description="How long the broker keeps this replica's session (subscriptions, queued QoS 1 messages) "
        "while it is away; 0 = a clean session (nothing kept).",
    )
    mqtt_receive_maximum: int = Field(
        default=10_000,
        ge=1,
        le=65_535,
        description="Unacknowledged QoS 1 messages the broker may have in flight to the hub (acknowledged after "
        "their batch is committed).",
    )
    telemetry_max_per_s: PositiveFloat = Field(
        default=20.0,
        description="Load reports per second one device may send on average; more are dropped before the "
        'database and counted (edgefleet_hub_ingest_dropped_total{reason="rate_limited"}).',
    )
    telemetry_burst: PositiveInt = Field(
        default=10_000, description="Reports a device may send at once (its spool after an outage: 8640 by default)."
    )
    batch_max_rows: PositiveInt = Field(default=1000, description="Flush ingest writes at this many rows.")
    batch_max_delay_ms: PositiveInt = Field(default=200, description="Flush ingest writes after this long.")
    telemetry_retention_s: PositiveFloat = Field(default=86_400.0, description="Telemetry rows older are pruned.")
    registry_refresh_s: PositiveFloat = Field(
        default=5.0, description="How often device statuses are re-read (devices provisioned/revoked elsewhere)."
    )

    @property
    def db_url(self) -> str:
        """The database URL to open."""
        return self.database_url or f"sqlite:///{self.data_dir / 'hub.db'}"

    def hub_url(self, bound_port: int | None = None) -> str:
        """The https:// URL devices and the CLI reach the hub at."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::", ""} else self.host  # noqa: S104  # not binding
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{bound_port or self.port}"


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> HubConfig:
    """HubConfig from a TOML file (every field settable, unknown keys refused), then `overrides` on top.

    Relative `data_dir` and `broker_cafile` in the file are relative to the file. `overrides` (the flags
    given on the command line) win over the file; ConfigError names the file and every problem."""
    data: dict[str, Any] = {}
    where = "the command line"
    if path is not None:
        where = f"config {str(path)!r}"
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {str(path)!r} is not valid TOML: {exc}") from exc
        for key in ("data_dir", "broker_cafile"):
            if isinstance(data.get(key), str):
                data[key] = path.parent / Path(data[key]).expanduser()
    try:
        return HubConfig.model_validate({**data, **(overrides or {})})
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{where} is invalid: {reasons}") from exc
