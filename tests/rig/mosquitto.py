"""A real mosquitto broker as a child process on a free loopback port, for tests and the demo.

Flavours:
- ``plain``: anonymous MQTT over TCP.
- ``tls``: anonymous MQTT over TLS with the test PKI's server certificate.
- ``mtls``: the production config from ``deploy/mosquitto/mosquitto.conf`` with the ACL rendered from
  ``deploy/mosquitto/acl.template``; only paths, port, persistence, logging and ``user`` are rewritten
  (see ``render_production_config``), so the tests exercise the ACL and TLS settings that ship.

When the tests run as root, the generated config says ``user root``: mosquitto would otherwise drop to
the ``mosquitto`` user, which cannot read the certificates and keys under pytest's private tmp dir.
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
from string import Template
from types import TracebackType
from typing import IO, Any, Literal, Protocol, Self

from .pki import TestPKI

Flavour = Literal["plain", "tls", "mtls"]
FLAVOURS: tuple[Flavour, ...] = ("plain", "tls", "mtls")

DEFAULT_PREFIX = "edgefleet/v1"
HUB_USERNAME = "edgefleet-hub"
HOST = "127.0.0.1"
INSTALL_HINT = "mosquitto not installed: apt-get install mosquitto"

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy" / "mosquitto"
PRODUCTION_CONF = DEPLOY_DIR / "mosquitto.conf"
ACL_TEMPLATE = DEPLOY_DIR / "acl.template"

# Directives of the production config that the rig rewrites; every other line is kept verbatim.
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
    }
)
_REQUIRED = ("listener", "cafile", "certfile", "keyfile", "acl_file")
# Rewritten directives that may repeat: the production lines are dropped and the override appended.
_APPENDED = frozenset({"log_type"})


class MosquittoError(RuntimeError):
    """The broker could not be configured, started or stopped."""


class MosquittoNotInstalledError(MosquittoError):
    """No mosquitto binary on PATH or at /usr/sbin/mosquitto."""


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary: PATH first, then Debian's /usr/sbin/mosquitto; None if absent."""
    found = shutil.which("mosquitto")
    if found:
        return found
    debian = Path("/usr/sbin/mosquitto")
    return str(debian) if os.access(debian, os.X_OK) else None


def require_mosquitto() -> str:
    """Path of the mosquitto binary, or raise with the install hint."""
    found = find_mosquitto()
    if found is None:
        raise MosquittoNotInstalledError(INSTALL_HINT)
    return found


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def render_acl(path: Path, prefix: str = DEFAULT_PREFIX, template: Path = ACL_TEMPLATE) -> Path:
    """Render the production ACL template for `prefix` into `path`."""
    path.write_text(Template(template.read_text()).substitute(prefix=prefix))
    return path


def render_production_config(
    overrides: dict[str, str | None],
    extra_lines: Sequence[str] = (),
    source: Path = PRODUCTION_CONF,
) -> str:
    """The production config with the values of the `_REWRITTEN` directives replaced.

    `overrides` maps a directive to its new value (None drops the line); a rewritten directive that the
    production file lacks (e.g. ``crlfile``) is appended after the listener block. A directive of
    `_REWRITTEN` not in `overrides` is dropped. `extra_lines` are appended as they are.
    """
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
        if directive not in _REWRITTEN:
            out.append(line)
            continue
        seen.add(directive)
        value = overrides.get(directive)
        if value is not None and directive not in _APPENDED:
            out.append(f"{directive} {value}")
    if listeners != 1:
        raise MosquittoError(f"{source}: the rig rewrites exactly one listener, found {listeners}")
    missing = [d for d in _REQUIRED if d not in seen]
    if missing:
        raise MosquittoError(f"{source}: missing directives the mTLS rig relies on: {missing}")
    # Appended lines land in the last (only) listener's block, or are global options.
    for directive, value in overrides.items():
        if value is not None and (directive not in seen or directive in _APPENDED):
            out.append(f"{directive} {value}")
    out.extend(extra_lines)
    return "\n".join(out) + "\n"


class Mosquitto:
    """One mosquitto child process with a generated config; a context manager that stops it on exit."""

    def __init__(
        self,
        flavour: Flavour,
        workdir: Path,
        *,
        pki: TestPKI | None = None,
        prefix: str = DEFAULT_PREFIX,
        crlfile: Path | None = None,
        persistence: bool = False,
        verbose_log: bool = True,
        extra_config: Sequence[str] = (),
        binary: str | None = None,
        start_timeout_s: float = 5.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
        if flavour != "plain" and pki is None:
            raise ValueError(f"flavour {flavour!r} needs a TestPKI")
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

    def _common(self) -> dict[str, str | None]:
        return {
            "user": "root" if os.geteuid() == 0 else None,
            "persistence": "true" if self.persistence else "false",
            "persistence_location": f"{self.workdir}/" if self.persistence else None,
            "log_dest": f"file {self.log_path}",
            "log_type": "all" if self.verbose_log else None,
        }

    def _tls_files(self) -> dict[str, str | None]:
        assert self.pki is not None
        return {
            "cafile": str(self.pki.cafile),
            "certfile": str(self.pki.server_certfile),
            "keyfile": str(self.pki.server_keyfile),
        }

    def _config(self) -> str:
        if self.flavour == "mtls":
            render_acl(self.acl_path, self.prefix)
            overrides = {
                **self._common(),
                "listener": f"{self.port} {self.host}",
                **self._tls_files(),
                "crlfile": str(self.crlfile) if self.crlfile is not None else None,
                "acl_file": str(self.acl_path),
            }
            return render_production_config(overrides, self.extra_config)
        settings = {**self._common(), "listener": f"{self.port} {self.host}", "allow_anonymous": "true"}
        if self.flavour == "tls":
            settings.update(self._tls_files())
        lines = [f"{k} {v}" for k, v in settings.items() if v is not None]
        if not self.verbose_log:
            lines += ["log_type error", "log_type warning", "log_type notice"]
        return "\n".join([*lines, *self.extra_config]) + "\n"


class MosquittoFactory(Protocol):
    """The `mosquitto_factory` fixture: start a broker of a flavour; teardown stops it."""

    def __call__(self, flavour: Flavour = "plain", **opts: Any) -> Mosquitto:
        """Start and return a broker; `opts` are `Mosquitto`'s keyword arguments."""
        ...
