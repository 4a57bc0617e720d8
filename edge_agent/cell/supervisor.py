"""`edge-agent serve` with a safety cell: binds both listeners, starts the cell and the main process, restarts
whichever dies, and stops both on SIGTERM/SIGINT.

Neither child is the other's parent, so a crash, hang or OOM kill of one leaves the other serving. The
supervisor holds the listening sockets for the children's whole life: while a child restarts, its clients'
connections wait in the kernel's backlog instead of being refused. Children die with the supervisor
(PR_SET_PDEATHSIG) and stay in its process group.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from edge_agent.cell.priority import child_env
from edge_agent.config import AgentConfig
from edge_agent.store import collect

__all__ = ["Child", "bind_tcp", "bind_unix", "supervise"]

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 35.0  # the children's own shutdown timeout is 30 s
HEALTHY_S = 60.0  # a child up this long resets its restart backoff
BACKLOG = 128


def bind_tcp(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket (port 0: any free one), inheritable by the children."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def bind_unix(path: Path, backlog: int = BACKLOG) -> socket.socket:
    """A listening Unix socket at `path` (a stale socket file is replaced), mode 0660."""
    if path.is_socket():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class Child:
    """One supervised role: how to start it, its process, and its restart state."""

    role: str
    argv: list[str]
    fds: tuple[int, ...]
    backoff_s: tuple[float, float]
    proc: subprocess.Popen[bytes] | None = None
    ready_r: int = -1
    ready: bool = False
    ever_ready: bool = False
    started_at: float = 0.0
    next_start: float = 0.0
    delay_s: float = 0.0
    restarts: int = 0

    def start(self) -> None:
        r, w = os.pipe()
        self.ready_r, self.ready = r, False
        os.set_blocking(r, False)
        argv = [*self.argv, "--ready-fd", str(w)]
        env = child_env("cell" if self.role == "safety cell" else self.role, dict(os.environ))
        self.proc = subprocess.Popen(argv, pass_fds=(*self.fds, w), env={**env, _PARENT_ENV: str(os.getpid())})
        os.close(w)
        self.started_at = time.monotonic()
        log.info("%s process started (pid %s)", self.role, self.proc.pid)

    def check_ready(self) -> None:
        if self.ready or self.ready_r < 0:
            return
        try:
            data = os.read(self.ready_r, 16)
        except BlockingIOError:
            return
        if data:
            self.ready = self.ever_ready = True
            log.info("%s process ready (pid %s)", self.role, self.proc.pid if self.proc else "?")

    def reap(self) -> int | None:
        """The exit status if the process ended (and forget it), else None."""
        if self.proc is None:
            return None
        status = self.proc.poll()
        if status is None:
            return None
        self.check_ready()
        os.close(self.ready_r)
        self.ready_r, self.proc = -1, None
        return status

    def schedule_restart(self) -> None:
        first, longest = self.backoff_s
        if time.monotonic() - self.started_at >= HEALTHY_S:
            self.delay_s = 0.0
        self.delay_s = first if self.delay_s == 0.0 else min(self.delay_s * 2, longest)
        self.next_start = time.monotonic() + self.delay_s
        self.restarts += 1


_PARENT_ENV = "EDGEFLEET_SUPERVISOR_PID"


def parent_pid() -> int | None:
    """The supervisor's pid, in a supervised child."""
    value = os.environ.get(_PARENT_ENV)
    return int(value) if value and value.isdigit() else None


_SELECTOR = selectors.DefaultSelector()


def _nap(seconds: float) -> None:
    """Sleep by waiting on the selector (epoll): unlike time.sleep's clock_nanosleep, it keeps working when the
    process runs under libfaketime with a jumped clock (tests/faults/test_clock_faults.py)."""
    _SELECTOR.select(seconds)


def _signal(child: Child, sig: signal.Signals) -> None:
    if child.proc is not None and child.proc.poll() is None:
        child.proc.send_signal(sig)


def _stop(children: list[Child]) -> None:
    for child in children:
        _signal(child, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        if child.proc is None:
            continue
        while child.proc.poll() is None and time.monotonic() < deadline:
            _nap(0.05)
        if child.proc.poll() is None:
            log.error("%s process did not stop in %.0f s: killing it", child.role, STOP_TIMEOUT_S)
            child.proc.kill()
            while child.proc.poll() is None:
                _nap(0.05)


def _children(config: AgentConfig, config_path: Path, log_level: str) -> tuple[list[Child], list[socket.socket]]:
    cell = config.safety_cell
    backlog = config.http.backlog
    main_sock = bind_tcp(config.http.host, config.http.port, backlog)
    cell_sock = bind_tcp(cell.host, cell.port, backlog)
    socks = [main_sock, cell_sock]
    base = [sys.executable, "-m", "edge_agent", "--log-level", log_level, "serve", "--config", str(config_path)]
    cell_args = ["--role", "cell", "--listen-fd", str(cell_sock.fileno())]
    cell_fds: tuple[int, ...] = (cell_sock.fileno(),)
    links = ["--cell-url", url_of(cell_sock)]
    if cell.unix_socket is not None:
        unix = bind_unix(cell.unix_socket, backlog)
        socks.append(unix)
        cell_args += ["--unix-fd", str(unix.fileno())]
        cell_fds += (unix.fileno(),)
        links += ["--cell-socket", str(cell.unix_socket)]
    backoff = cell.restart_backoff_s
    children = [
        Child("safety cell", [*base, *cell_args, *links], cell_fds, backoff),
        Child(
            "main",
            [*base, "--role", "main", "--listen-fd", str(main_sock.fileno()), *links],
            (main_sock.fileno(),),
            backoff,
        ),
    ]
    return children, socks


def supervise(config: AgentConfig, config_path: Path, log_level: str = "INFO") -> int:
    """Run the cell and the main process until SIGTERM/SIGINT; 1 if either fails to start at all."""
    try:
        collect(config)  # import model_dirs into the store once, before either process reads it
    except Exception as exc:
        print(f"edge-agent: start failed: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        children, socks = _children(config, config_path, log_level)
    except OSError as exc:
        print(f"edge-agent: cannot listen: {exc}", file=sys.stderr, flush=True)
        return 1
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        return _run(children, stopping)
    finally:
        _stop(children)
        for sock in socks:
            sock.close()
        if config.safety_cell.unix_socket is not None:
            config.safety_cell.unix_socket.unlink(missing_ok=True)


def _run(children: list[Child], stopping: list[int]) -> int:
    for child in children:
        child.start()
    while not stopping:
        for child in children:
            child.check_ready()
            status = child.reap()
            if status is not None:
                if not child.ever_ready:
                    log.error("%s process failed to start (exit status %s): stopping", child.role, status)
                    return status if status > 0 else 1
                child.schedule_restart()
                log.error(
                    "%s process died (exit status %s); restart %s in %.1f s",
                    child.role,
                    status,
                    child.restarts,
                    child.delay_s,
                )
            elif child.proc is None and time.monotonic() >= child.next_start:
                child.start()
        _nap(0.05)
    log.info("signal %s: stopping both processes", stopping[0])
    return 0
