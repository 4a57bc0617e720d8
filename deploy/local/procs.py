"""Child processes of the local stack: each in its own process group, logged to a file, always stopped.

Every child is started with `start_new_session=True`, so a Ctrl-C in the terminal reaches only the parent
(the demo, a bench, pytest), which then stops the children itself: SIGTERM to each group (newest first),
SIGKILL to the groups still alive after a grace period. `stop_all` runs from the parent's `finally`; an
`atexit` hook repeats it with SIGKILL as a safety net for paths that skip the `finally` (e.g. `sys.exit`
from a signal handler). The PIDs go to `pids.json` in the workdir as they are started, so a test can check
that none survives. Also here: `free_port` and `accepting` (a TCP ready-wait on a child).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # everything of the local stack listens on loopback


class StackError(RuntimeError):
    """A step of the local stack failed; the message says which and points at its log."""


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Child:
    """One started process and its log file (stdout and stderr together)."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        """Process id (= its process group id)."""
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """Whether it still runs."""
        return self.proc.poll() is None

    def output(self) -> str:
        """Everything it wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 15) -> str:
        """The last lines of its output, for error messages."""
        return "\n".join(self.output().splitlines()[-lines:]) or "(no output)"

    async def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """Wait until its output matches `pattern`; StackError if it exits or the time runs out."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout_s
        while True:
            found = regex.search(self.output())
            if found:
                return found
            if not self.alive:
                raise StackError(f"{self.name} exited with {self.proc.returncode}; last output:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} not ready within {timeout_s:.0f} s; last output:\n{self.tail()}")
            await asyncio.sleep(0.1)

    async def wait_exit(self, timeout_s: float) -> int:
        """Wait for it to exit; StackError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} still running after {timeout_s:.0f} s; last output:\n{self.tail()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode


class Supervisor:
    """Starts children, records their PIDs, and stops every one of them, once, whatever happens."""

    def __init__(self, workdir: Path, grace_s: float = 5.0) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        # Children's output holds secrets (the hub prints its first operator token, claims print their join
        # line): the folder is the owner's only, and so is every log in it.
        self.logs.mkdir(parents=True, exist_ok=True)
        self.logs.chmod(0o700)
        self.pids_file = workdir / "pids.json"
        self.grace_s = grace_s
        self.children: list[Child] = []
        self._closed = False
        self._write_pids()
        atexit.register(self.kill_all)

    def spawn(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Child:
        """Start `argv` in its own session with output to logs/<name>.log."""
        if self._closed:
            raise StackError(f"not starting {name}: the supervisor is stopping")
        log_path = self.logs / f"{name}.log"
        child_env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env.update(env or {})
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as out:
            os.fchmod(out.fileno(), 0o600)  # also when it was there before
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=child_env,
                    cwd=cwd,
                    start_new_session=True,  # own process group: Ctrl-C reaches the parent, which stops it
                )
            except OSError as exc:
                raise StackError(f"cannot start {name} ({argv[0]}): {exc}") from exc
        child = Child(name, argv, proc, log_path)
        self.children.append(child)
        self._write_pids()
        log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return child

    async def run(self, name: str, argv: list[str], timeout_s: float = 60.0) -> str:
        """Run a short command to completion under supervision; its output, StackError on failure."""
        child = self.spawn(name, argv)
        try:
            code = await child.wait_exit(timeout_s)
        except BaseException:
            self._stop([child], signal.SIGKILL, 1.0)
            raise
        if code != 0:
            raise StackError(f"`{' '.join(argv[:4])} ...` failed ({code}):\n{child.tail()}")
        return child.output()

    def pids(self) -> dict[str, int]:
        """name -> pid of every child ever started (also finished ones)."""
        return {c.name: c.pid for c in self.children}

    def stop_all(self) -> None:
        """SIGTERM every live group (newest first), SIGKILL what is left after the grace period, reap all."""
        self._closed = True
        self._stop(list(reversed(self.children)), signal.SIGTERM, self.grace_s)

    def kill_all(self) -> None:
        """SIGKILL every live group at once (the atexit safety net)."""
        self._closed = True
        self._stop(list(self.children), signal.SIGKILL, 2.0)

    def _stop(self, children: list[Child], sig: signal.Signals, grace_s: float) -> None:
        live = [c for c in children if c.alive]
        for child in live:
            _signal_group(child.pid, sig)
        deadline = time.monotonic() + grace_s
        for child in live:
            try:
                child.proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored %s: killing it", child.name, child.pid, sig.name)
                _signal_group(child.pid, signal.SIGKILL)
                child.proc.wait(timeout=5)
        # A group may outlive its leader (a grandchild): kill whatever is left of the groups just stopped.
        for child in live:
            _signal_group(child.pid, signal.SIGKILL)

    def _write_pids(self) -> None:
        tmp = self.pids_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"demo": os.getpid(), "children": self.pids()}, indent=2))
        tmp.replace(self.pids_file)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def accepting(child: Child, port: int, timeout_s: float = 5.0, host: str = HOST) -> bool:
    """Wait until `child` accepts TCP connections on `port`; False if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive:
            return False  # e.g. the port was taken between probe and bind: the caller may try another
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return True
    return False
