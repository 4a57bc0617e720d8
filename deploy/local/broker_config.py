"""mosquitto configs for local brokers: the production one from deploy/mosquitto, or plain/TLS test ones.

Flavours:
- ``plain``: anonymous MQTT over TCP.
- ``tls``: anonymous MQTT over TLS with a server certificate.
- ``mtls``: the production config from ``deploy/mosquitto/mosquitto.conf``; only paths, port, persistence,
  logging, ``user`` and the authoriser are rewritten (see ``render_production_config``), so the tests and
  the demo run the TLS settings that ship. The authoriser (`Authz`) is the shipped dynamic-security plugin
  with a seed from ``cloud_hub/broker/dynsec.py`` (the demo stack, `start_broker`), or ``acl_file`` rendered
  from ``deploy/mosquitto/acl.template`` (the weaker alternative; the `Mosquitto` rig's default, because
  most tests connect certificates that no hub registers).

When run as root, the generated config says ``user root``: mosquitto would otherwise drop to the
``mosquitto`` user, which cannot read the certificates and keys under a private temp dir.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Literal, Protocol

from cloud_hub.broker import dynsec
from deploy.local.procs import HOST, StackError

Flavour = Literal["plain", "tls", "mtls"]
FLAVOURS: tuple[Flavour, ...] = ("plain", "tls", "mtls")
# How the mtls broker authorises: the shipped dynamic-security plugin, which also authorises SUBSCRIBE
# ($share filters included; cloud_hub/broker/dynsec.py), or acl_file (deploy/mosquitto/acl.template).
Authz = Literal["acl", "dynsec"]
# The rig's identity for the dynsec control API (never a device id: edgefleet-* is reserved).
RIG_ADMIN = "edgefleet-rig-admin"

DEFAULT_PREFIX = "edgefleet/v1"
HUB_USERNAME = "edgefleet-hub"
# The local stack's hub identities: one CN per replica process on a shared data dir (cloud_hub.pki.replica_cn).
HUB_REPLICAS = (HUB_USERNAME, *(f"{HUB_USERNAME}-{n}" for n in range(2, 5)))

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy" / "mosquitto"
PRODUCTION_CONF = DEPLOY_DIR / "mosquitto.conf"
ACL_TEMPLATE = DEPLOY_DIR / "acl.template"

# Directives of the production config that are rewritten; every other line is kept verbatim.
_REWRITTEN = frozenset(
    {
        "listener",
        "cafile",
        "capath",
        "certfile",
        "keyfile",
        "crlfile",
        "acl_file",
        "persistence",
        "persistence_location",
        "persistence_file",
        "autosave_interval",
        "log_dest",
        "log_type",
        "pid_file",
        "user",
        "plugin",
        "plugin_opt_config_file",
    }
)
_REQUIRED = ("listener", "cafile", "certfile", "keyfile", "plugin", "plugin_opt_config_file")
# Rewritten directives that may repeat: the production lines are dropped and the override appended.
_APPENDED = frozenset({"log_type"})


class MosquittoError(StackError):
    """The broker could not be configured, started or stopped."""


class ServerCerts(Protocol):
    """The broker's TLS files: what a test PKI (tests/rig/pki.py) or `ServerTLS` provides."""

    @property
    def cafile(self) -> Path:
        """CA certificate the broker trusts for client certificates."""
        ...

    @property
    def server_certfile(self) -> Path:
        """The broker's certificate."""
        ...

    @property
    def server_keyfile(self) -> Path:
        """The broker's private key."""
        ...


@dataclass(frozen=True)
class ServerTLS:
    """The files of `cloud-hub pki broker-cert --out DIR`: the hub CA and the broker's certificate."""

    cafile: Path
    server_certfile: Path
    server_keyfile: Path
    crlfile: Path | None = None

    @classmethod
    def from_broker_cert_dir(cls, tls_dir: Path) -> ServerTLS:
        """The files `cloud-hub pki broker-cert` wrote to `tls_dir`."""
        crl = tls_dir / "edgefleet.crl"
        return cls(
            tls_dir / "edgefleet-ca.pem", tls_dir / "broker.pem", tls_dir / "broker.key", crl if crl.exists() else None
        )


def render_acl(
    path: Path,
    prefix: str = DEFAULT_PREFIX,
    template: Path = ACL_TEMPLATE,
    hub_usernames: Sequence[str] = (HUB_USERNAME,),
) -> Path:
    """Render the production ACL template for `prefix` into `path`, the hub's rights for every hub identity.

    The template's ``user edgefleet-hub`` block is the hub's; with ``use_username_as_clientid`` each hub
    replica needs its own certificate CN, so the block is repeated for every name of `hub_usernames`.
    """
    path.write_text(hub_acl_blocks(Template(template.read_text()).substitute(prefix=prefix), hub_usernames))
    return path


def hub_acl_blocks(acl: str, hub_usernames: Sequence[str]) -> str:
    """`acl` with its ``user edgefleet-hub`` block (up to the next ``user`` line) once per hub username."""
    lines = acl.splitlines()
    try:
        start = lines.index(f"user {HUB_USERNAME}")
    except ValueError as exc:
        raise MosquittoError(f"the ACL has no 'user {HUB_USERNAME}' block") from exc
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("user ")), len(lines))
    rules = [line for line in lines[start + 1 : end] if line.startswith("topic ")]
    blocks = [[f"user {name}", *rules] for name in dict.fromkeys(hub_usernames)]
    return "\n".join([*lines[:start], *(line for block in blocks for line in block), *lines[end:]]) + "\n"


def render_production_config(
    overrides: dict[str, str | None],
    extra_lines: Sequence[str] = (),
    source: Path = PRODUCTION_CONF,
    *,
    keep_log_types: bool = False,
) -> str:
    """The production config with the values of the `_REWRITTEN` directives replaced.

    `overrides` maps a directive to its new value (None drops the line); a rewritten directive that the
    production file lacks (e.g. ``crlfile``) is appended after the listener block. A directive of
    `_REWRITTEN` not in `overrides` is dropped, except the production ``log_type`` lines with
    `keep_log_types`. `extra_lines` are appended as they are.
    """
    if not source.exists():
        raise MosquittoError(f"{source} not found: run from an edgefleet checkout (make demo)")
    out: list[str] = []
    seen: set[str] = set()
    listeners = 0
    for line in source.read_text().splitlines():
        words = line.split(maxsplit=1)
        if not words or words[0].startswith("#"):
            out.append(line)
            continue
        directive = words[0]
        if directive == "listener":
            listeners += 1
        if directive not in _REWRITTEN or (keep_log_types and directive == "log_type"):
            out.append(line)
            continue
        seen.add(directive)
        value = overrides.get(directive)
        if value is not None and directive not in _APPENDED:
            out.append(f"{directive} {value}")
    if listeners != 1:
        raise MosquittoError(f"{source}: exactly one listener is rewritten, found {listeners}")
    missing = [d for d in _REQUIRED if d not in seen]
    if missing:
        raise MosquittoError(f"{source}: missing directives the mTLS broker relies on: {missing}")
    # Appended lines land in the last (only) listener's block, or are global options.
    for directive, value in overrides.items():
        if value is not None and (directive not in seen or directive in _APPENDED):
            out.append(f"{directive} {value}")
    out.extend(extra_lines)
    return "\n".join(out) + "\n"


def broker_config(
    flavour: Flavour,
    port: int,
    *,
    log_path: Path,
    tls: ServerCerts | None = None,
    acl_path: Path | None = None,
    prefix: str = DEFAULT_PREFIX,
    crlfile: Path | None = None,
    persistence_dir: Path | None = None,
    verbose_log: bool | None = True,
    extra_config: Sequence[str] = (),
    host: str = HOST,
    hub_usernames: Sequence[str] = (HUB_USERNAME,),
    authz: Authz = "dynsec",
    device_ids: Sequence[str] = (),
    dynsec_admins: Sequence[str] = (),
) -> str:
    """The config text of a broker on `host:port`; for ``mtls`` the ACL is rendered to `acl_path` first, or
    (dynsec) the plugin's seed written next to it: the hub role for `hub_usernames`, the control API for
    `dynsec_admins`, a role per `device_ids`.

    `persistence_dir` turns persistence on (off without it). `verbose_log`: True logs everything, False
    errors, warnings and notices only, None keeps the production config's log levels (``mtls`` only).
    """
    common: dict[str, str | None] = {
        "user": "root" if os.geteuid() == 0 else None,
        "persistence": "true" if persistence_dir is not None else "false",
        "persistence_location": f"{persistence_dir}/" if persistence_dir is not None else None,
        "log_dest": f"file {log_path}",
    }
    if verbose_log is not None:
        common["log_type"] = "all" if verbose_log else None
    files: dict[str, str | None] = {}
    if tls is not None:
        files = {"cafile": str(tls.cafile), "certfile": str(tls.server_certfile), "keyfile": str(tls.server_keyfile)}
    if flavour == "mtls":
        if tls is None or acl_path is None:
            raise ValueError("the mtls flavour needs server certificates and an ACL path")
        overrides: dict[str, str | None] = {
            **common,
            "listener": f"{port} {host}",
            **files,
            "crlfile": str(crlfile) if crlfile is not None else None,
        }
        if authz == "dynsec":
            # acl_file would answer SUBSCRIBE first (and grant it): dynsec alone decides.
            seed = dynsec.seed_config(prefix, hub_usernames, dynsec_admins, device_ids)
            dynsec_path = acl_path.with_name("dynamic-security.json")
            dynsec_path.write_text(json.dumps(seed, indent=1))
            overrides |= {"plugin": dynsec.PLUGIN_PATH, "plugin_opt_config_file": str(dynsec_path)}
        else:
            render_acl(acl_path, prefix, hub_usernames=hub_usernames)
            overrides["acl_file"] = str(acl_path)
        return render_production_config(overrides, extra_config, keep_log_types=verbose_log is None)
    settings = {**common, "listener": f"{port} {host}", "allow_anonymous": "true"}
    if flavour == "tls":
        settings.update(files)
    lines = [f"{k} {v}" for k, v in settings.items() if v is not None]
    if not verbose_log:
        lines += ["log_type error", "log_type warning", "log_type notice"]
    return "\n".join([*lines, *extra_config]) + "\n"


def render_config(port: int, tls_dir: Path, acl: Path, log_file: Path, authz: Authz = "dynsec") -> str:
    """The production config on `port` with the files of `cloud-hub pki broker-cert` (the demo's broker)."""
    tls = ServerTLS.from_broker_cert_dir(tls_dir)
    return broker_config(
        "mtls", port, log_path=log_file, tls=tls, acl_path=acl, verbose_log=None, crlfile=tls.crlfile,
        hub_usernames=HUB_REPLICAS, authz=authz,
    )  # fmt: skip
