"""Mosquitto for the demo: the production config of deploy/mosquitto/, with only its paths and port changed.

Every line of `deploy/mosquitto/mosquitto.conf` is kept except the values of the directives that must point
at the demo's own files (listener, TLS files, ACL, persistence, logging, pid file, user), and the ACL is
rendered from `acl.template` with the topic prefix. So the demo runs the mTLS + ACL settings that ship.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from pathlib import Path
from string import Template

from cloud_hub.demo.procs import Child, DemoError, Supervisor

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
HOST = "127.0.0.1"
# Directives whose values the demo replaces; a None value drops the line.
_REWRITTEN = (
    "listener",
    "cafile",
    "certfile",
    "keyfile",
    "crlfile",
    "acl_file",
    "persistence",
    "persistence_location",
    "autosave_interval",
    "log_dest",
    "log_type",
    "pid_file",
    "user",
)


def find_mosquitto() -> str:
    """Path of the mosquitto binary; DemoError with the install hint if there is none."""
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)
    if found is None:
        raise DemoError("mosquitto is not installed: run `sudo apt-get install mosquitto` (or `make setup`)")
    return found


def free_port(host: str = HOST) -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def render_config(port: int, tls_dir: Path, acl: Path, log_file: Path, deploy: Path = DEPLOY_DIR) -> str:
    """deploy/mosquitto/mosquitto.conf with the demo's port and files."""
    values: dict[str, str | None] = {
        "listener": f"{port} {HOST}",
        "cafile": str(tls_dir / "edgefleet-ca.pem"),
        "certfile": str(tls_dir / "broker.pem"),
        "keyfile": str(tls_dir / "broker.key"),
        "acl_file": str(acl),
        "persistence": "false",
        "log_dest": f"file {log_file}",
        # Running as root, mosquitto would drop to user `mosquitto`, which cannot read the demo's files.
        "user": "root" if os.geteuid() == 0 else None,
    }
    source = deploy / "mosquitto.conf"
    if not source.exists():
        raise DemoError(f"{source} not found: run the demo from an edgefleet checkout (make demo)")
    out: list[str] = []
    listeners = 0
    for line in source.read_text().splitlines():
        words = line.split(maxsplit=1)
        directive = words[0] if words else ""
        listeners += directive == "listener"
        if directive in _REWRITTEN and directive != "log_type":  # the production log levels are kept
            value = values.get(directive)
            if value is not None:
                out.append(f"{directive} {value}")
            continue
        out.append(line)
    if listeners != 1:
        raise DemoError(f"{source}: expected one listener, found {listeners}")
    return "\n".join(out) + "\n"


async def start_broker(sup: Supervisor, workdir: Path, tls_dir: Path, prefix: str) -> tuple[Child, int]:
    """Start mosquitto with the production mTLS + ACL config on a free port; (child, port)."""
    binary = find_mosquitto()
    acl = workdir / "acl.conf"
    acl.write_text(Template((DEPLOY_DIR / "acl.template").read_text()).substitute(prefix=prefix))
    conf = workdir / "mosquitto.conf"
    for attempt in range(3):
        port = free_port()
        conf.write_text(render_config(port, tls_dir, acl, workdir / "logs" / "mosquitto-broker.log"))
        child = sup.spawn(f"mosquitto-{attempt}" if attempt else "mosquitto", [binary, "-c", str(conf)])
        if await _accepting(child, port):
            return child, port
    raise DemoError(f"mosquitto did not start; last output:\n{child.tail()}")


async def _accepting(child: Child, port: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive:
            return False  # most likely the port was taken between probe and bind: try another
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return True
    return False
