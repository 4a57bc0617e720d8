"""THE mosquitto of the local stack: a child process on a free loopback port with a generated config.

Two ways to run it, one config (`broker_config`): `Mosquitto`, a synchronous object that owns its process
(tests, benchmarks; acl_file unless told `authz="dynsec"`), and `start_broker`, the production mTLS broker
with the shipped dynamic-security plugin as a `Supervisor` child next to the hub and the agents (the demo,
the end-to-end and fault suites, the soak).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from cloud_hub.broker import dynsec
from deploy.local.broker_config import (
    DEFAULT_PREFIX,
    FLAVOURS,
    HUB_REPLICAS,
    RIG_ADMIN,
    Authz,
    Flavour,
    MosquittoError,
    ServerCerts,
    ServerTLS,
    broker_config,
)
from deploy.local.procs import HOST, Child, Supervisor, accepting, free_port

INSTALL_HINT = "mosquitto not installed: apt-get install mosquitto"
DEMO_INSTALL_HINT = "mosquitto is not installed: run `sudo apt-get install mosquitto` (or `make setup`)"


class MosquittoNotInstalledError(MosquittoError):
    """No mosquitto binary on PATH or at /usr/sbin/mosquitto."""


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary: PATH first, then Debian's /usr/sbin/mosquitto; None if absent."""
    found = shutil.which("mosquitto")
    if found:
        return found
    debian = Path("/usr/sbin/mosquitto")
    return str(debian) if os.access(debian, os.X_OK) else None


def require_mosquitto(hint: str = INSTALL_HINT) -> str:
    """Path of the mosquitto binary, or raise with the install hint."""
    found = find_mosquitto()
    if found is None:
        raise MosquittoNotInstalledError(hint)
    return found


async def start_broker(
    sup: Supervisor, workdir: Path, tls_dir: Path, prefix: str, authz: Authz = "dynsec"
) -> tuple[Child, int]:
    """The production mTLS broker (certificates from `cloud-hub pki broker-cert`) on a free port.

    Config in `workdir`/mosquitto.conf; with dynsec (the shipped default) the plugin's registry in
    `workdir`/dynamic-security.json, seeded with the hub replicas only (the hub registers every device it
    provisions, `broker_authz = "dynsec"`, the hub's default); with acl the ACL in `workdir`/acl.conf.
    Log in `workdir`/logs; (child, port).
    """
    binary = require_mosquitto(DEMO_INSTALL_HINT)
    conf = workdir / "mosquitto.conf"
    tls = ServerTLS.from_broker_cert_dir(tls_dir)
    log_path = workdir / "logs" / "mosquitto-broker.log"
    for attempt in range(3):
        port = free_port()
        text = broker_config(
            "mtls", port, log_path=log_path, tls=tls, acl_path=workdir / "acl.conf", prefix=prefix, verbose_log=None,
            crlfile=tls.crlfile, hub_usernames=HUB_REPLICAS, authz=authz,
        )  # fmt: skip
        conf.write_text(text)
        child = sup.spawn(f"mosquitto-{attempt}" if attempt else "mosquitto", [binary, "-c", str(conf)])
        if await accepting(child, port):  # not alive: most likely the port was taken meanwhile, try another
            return child, port
    raise MosquittoError(f"mosquitto did not start; last output:\n{child.tail()}")


class Mosquitto:
    """One mosquitto child process with a generated config; a context manager that stops it on exit."""

    def __init__(
        self,
        flavour: Flavour,
        workdir: Path,
        *,
        pki: ServerCerts | None = None,
        prefix: str = DEFAULT_PREFIX,
        crlfile: Path | None = None,
        persistence: bool = False,
        verbose_log: bool = True,
        extra_config: Sequence[str] = (),
        hub_usernames: Sequence[str] = HUB_REPLICAS,
        authz: Authz = "acl",  # the rig's default: most tests connect certificates no hub registers
        device_ids: Sequence[str] = (),
        binary: str | None = None,
        start_timeout_s: float = 5.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
        if flavour != "plain" and pki is None:
            raise ValueError(f"flavour {flavour!r} needs server certificates (a TestPKI)")
        if crlfile is not None and flavour != "mtls":
            raise ValueError("crlfile only makes sense with the mtls flavour")
        self.flavour: Flavour = flavour
        self.host = HOST
        self.port = 0
        self.prefix = prefix
        self.pki = pki
        self.crlfile = crlfile
        self.persistence = persistence
        self.verbose_log = verbose_log
        self.extra_config = tuple(extra_config)
        self.hub_usernames = tuple(hub_usernames)  # CNs with the hub's ACL rights (one per hub replica)
        self.authz: Authz = authz
        self.device_ids = tuple(device_ids)  # dynsec: devices registered in the seed
        self.binary = binary or require_mosquitto()
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.output_path = workdir / "mosquitto.out"
        self.acl_path = workdir / "acl.conf"
        self.pids: list[int] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    # --- life cycle --------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the running broker, None when stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start on a fresh free port (the first time) or on the same port (after stop/kill)."""
        if self._proc is not None:
            raise MosquittoError("already started")
        if self.port:
            self._spawn()
            return self
        # Another process may take the port between our probe and mosquitto's bind: try a few.
        for attempt in range(3):
            self.port = free_port(self.host)
            try:
                self._spawn()
            except MosquittoError:
                if attempt == 2 or "Address already in use" not in self.log_tail():
                    raise
            else:
                return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SIGTERM the broker by PID, SIGKILL it after `stop_timeout_s`, and reap it."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the broker at once (a crash: no will messages flushed, no persistence save)."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same port (clients see a broker restart)."""
        self.stop()
        self._spawn()

    def reload(self) -> None:
        """Send SIGHUP (what `systemctl reload mosquitto` does) and wait until the broker has reloaded."""
        proc = self._require_running()
        before = self.log_path.read_text(errors="replace").count("Reloading config.")
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + self.start_timeout_s
        while self.log_path.read_text(errors="replace").count("Reloading config.") <= before:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise MosquittoError(f"broker did not reload:\n{self.log_tail()}")
            time.sleep(0.02)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- diagnostics -------------------------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's log file and of its stdout/stderr."""
        parts = []
        for path in (self.output_path, self.log_path):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no broker output)"

    def __repr__(self) -> str:
        return f"Mosquitto({self.flavour!r}, {self.host}:{self.port}, pid={self.pid})"

    # --- internals ---------------------------------------------------------------------------------

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise MosquittoError(f"broker is not running:\n{self.log_tail()}")
        return self._proc

    def _spawn(self) -> None:
        self.conf_path.write_text(self._config())
        self.log_path.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self._output = self.output_path.open("wb")
        try:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=self._output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: a Ctrl-C to pytest does not reach it first
            )
        except OSError as exc:
            self._output.close()
            self._output = None
            raise MosquittoError(f"cannot run {self.binary}: {exc}") from exc
        self.pids.append(self._proc.pid)
        try:
            self._wait_until_accepting()
        except BaseException:
            self.kill()
            raise

    def _wait_until_accepting(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._proc.poll() is not None:
                raise MosquittoError(
                    f"mosquitto exited with {self._proc.returncode} on {self.host}:{self.port}:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise MosquittoError(
                    f"mosquitto did not accept connections on {self.host}:{self.port} within "
                    f"{self.start_timeout_s} s:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _terminate(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, sig)
                try:
                    proc.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=self.stop_timeout_s)
        finally:
            if self._output is not None:
                self._output.close()
                self._output = None

    def _config(self) -> str:
        return broker_config(
            self.flavour,
            self.port,
            log_path=self.log_path,
            tls=self.pki,
            acl_path=self.acl_path,
            prefix=self.prefix,
            crlfile=self.crlfile,
            persistence_dir=self.workdir if self.persistence else None,
            verbose_log=self.verbose_log,
            extra_config=self.extra_config,
            host=self.host,
            hub_usernames=self.hub_usernames,
            authz=self.authz,
            device_ids=self.device_ids,
            dynsec_admins=(RIG_ADMIN,),
        )

    def dynsec(self, commands: Sequence[dict[str, object]], admin_cert: tuple[Path, Path]) -> None:
        """Run dynamic-security control commands as `admin_cert` (CN `RIG_ADMIN` or a hub's) and wait for
        the answer; raise on any error but "already exists"/"not found"."""
        run_dynsec(self, commands, admin_cert)


def run_dynsec(broker: Mosquitto, commands: Sequence[dict[str, object]], admin_cert: tuple[Path, Path]) -> None:
    """One synchronous control-API round trip (paho, its own thread) on the mtls `broker`."""
    import ssl
    import threading
    import uuid

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if broker.pki is None:
        raise MosquittoError("dynsec needs the mtls flavour")
    correlation = uuid.uuid4().hex
    answer: list[list[str]] = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        errors = dynsec.failures(bytes(msg.payload), correlation)
        if errors is not None:
            answer.append(errors)
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rig-admin-{correlation[:8]}", protocol=mqtt.MQTTv5)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(broker.pki.cafile))
    ctx.load_cert_chain(str(admin_cert[0]), str(admin_cert[1]))
    client.tls_set_context(ctx)
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect(broker.host, broker.port, 30)
    client.loop_start()
    try:
        client.subscribe(dynsec.RESPONSE_TOPIC, qos=1)
        if not subscribed.wait(10):
            raise MosquittoError("no SUBACK for the dynsec response topic")
        client.publish(dynsec.CONTROL_TOPIC, dynsec.encode(commands, correlation), qos=1)
        if not done.wait(10):
            raise MosquittoError(f"no dynsec answer:\n{broker.log_tail(10)}")
    finally:
        client.disconnect()
        client.loop_stop()
    if answer[0]:
        raise MosquittoError(f"dynsec refused: {answer[0]}")
