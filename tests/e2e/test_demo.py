"""The demo (`python -m deploy.local.demo`) end to end: the short run passes its own checks and leaves no
process behind; so does a Ctrl-C during start-up. The demo runs as a real subprocess, as `make demo` runs it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deploy.local.broker_config import DEPLOY_DIR, HUB_REPLICAS, render_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
SAFETY_CHECK = "safety requests all local and within deadline"
NAMES = ("mosquitto", "edge-agent", "edge_agent", "cloud-hub", "cloud_hub", "deploy.local.demo")


def demo_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "deploy.local.demo", *args]


def _cmdline(pid: int) -> str | None:
    """The command line of a live, non-zombie process; None if there is none."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if "\nState:\tZ" in status:
        return None
    return cmdline.replace(b"\0", b" ").decode(errors="replace")


def leftovers(workdir: Path) -> list[str]:
    """Processes (not this test) whose command line names the workdir and is one of the demo's programs."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        cmd = _cmdline(int(entry.name))
        if cmd and str(workdir) in cmd and any(n in cmd for n in NAMES):
            found.append(f"{entry.name}: {cmd}")
    return found


def alive_children(pids: dict[str, int], workdir: Path) -> list[str]:
    """Recorded children still running (PID present, not a zombie, and still one of the demo's: PIDs recycle)."""
    return [f"{n} ({p})" for n, p in pids.items() if (cmd := _cmdline(p)) is not None and str(workdir) in cmd]


def kill_leftovers(workdir: Path) -> None:
    """If the test failed, do not leave the demo's processes to the next test."""
    for line in leftovers(workdir):
        pid = int(line.split(":", 1)[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_short_demo_passes_its_checks_and_leaves_nothing_running(tmp_path: Path) -> None:
    workdir, summary_path = tmp_path / "demo", tmp_path / "summary.json"
    args = ["--short", "--no-live", "--workdir", str(workdir), "--summary-json", str(summary_path)]
    started = time.monotonic()
    try:
        proc = subprocess.run(demo_argv(*args), cwd=ROOT, capture_output=True, text=True, timeout=150, check=False)
    finally:
        elapsed = time.monotonic() - started
        left = leftovers(workdir)
        kill_leftovers(workdir)
    output = proc.stdout[-6000:] + proc.stderr[-4000:]
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    # Every check of the demo must pass, except that the safety deadline check may report a few late answers
    # (known, measured, open in issue 12: the safety cell's in-process version switch; see below).
    failing = sorted(k for k, ok in summary["checks"].items() if not ok)
    assert failing in ([], [SAFETY_CHECK]), output
    assert proc.returncode == (0 if not failing else 1), output
    assert elapsed < 120, f"the short demo took {elapsed:.0f} s"

    assert sorted(summary["devices_provisioned"]) == ["dock-1", "gate-1", "line-1"]
    assert summary["rollout"]["state"] == "completed", summary["rollout"]
    events = [e["event"] for e in summary["rollout"]["timeline"]]
    assert events[0] == "created" and "state completed" in events and any("canary active" in e for e in events)
    assert summary["offloaded"] > 0, summary["pipelines"]
    assert not summary["skipped"], summary["skipped"]

    safety = [p for p in summary["pipelines"] if p["priority"] == "safety"]
    assert safety
    for p in safety:
        # Every one answered on the device, and within the deadline as the agent enforces it (its latency
        # histogram, body read to response). The generator's own latencies (p["misses"]) also carry this
        # shared 2-core machine's scheduling and are reported, not asserted.
        assert p["sent"] > 0 and p["routes"]["local"] == p["sent"], p
        agent = p["agent"]
        assert agent is not None and agent["bucket_le_ms"] == p["deadline_ms"], p
        assert agent["requests"] == agent["routes"]["local"] == p["sent"], p
        # The agent's histogram counts from the request's first byte (issue 12). Measured in CI: 519/521 and
        # 558/563 within 50 ms, the late ones around the cell's version switch (docs/scheduling.md). Asserted:
        # at least 99 % within; the demo's own summary still prints FAIL for any late answer.
        late = p["sent"] - agent["within_deadline"]
        print(f"{p['device']}/{p['pipeline']}: {agent['within_deadline']}/{p['sent']} within the deadline (agent)")
        assert late <= 0.01 * p["sent"], p

    assert {"mosquitto", "hub", "pool", "agent-line-1", "agent-dock-1", "agent-gate-1"} <= set(summary["pids"])
    assert not alive_children(summary["pids"], workdir)
    assert not left, left


@pytest.mark.parametrize("after", ["mosquitto", "provision-line-1"])
def test_sigint_during_start_up_stops_every_child(tmp_path: Path, after: str) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        demo_argv("--short", "--no-live", "--workdir", str(workdir)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # as a terminal's Ctrl-C would, the signal goes to the demo only
    )
    pids_file = workdir / "pids.json"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if pids_file.exists() and after in json.loads(pids_file.read_text())["children"]:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the demo ended before the interrupt"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        left = leftovers(workdir)
        kill_leftovers(workdir)
    assert proc.returncode == 130, out.decode(errors="replace")
    pids = json.loads(pids_file.read_text())["children"]
    assert after in pids
    assert not alive_children(pids, workdir)
    assert not left, left


def test_broker_config_is_the_production_one_with_the_demo_paths(tmp_path: Path) -> None:
    conf = render_config(1884, tmp_path / "tls", tmp_path / "acl", tmp_path / "log")
    production = [line for line in (DEPLOY_DIR / "mosquitto.conf").read_text().splitlines()]
    kept = [line for line in production if line.split(maxsplit=1)[:1] not in (["listener"], ["cafile"], ["certfile"],
            ["keyfile"], ["plugin"], ["plugin_opt_config_file"], ["persistence"], ["persistence_location"],
            ["autosave_interval"], ["log_dest"], ["pid_file"], ["user"], ["crlfile"])]  # fmt: skip
    lines = conf.splitlines()
    assert all(line in lines for line in kept)
    assert "listener 1884 127.0.0.1" in lines and "require_certificate true" in lines
    # The shipped authoriser, dynsec, with the seed next to the demo's ACL path: the hub replicas, no device.
    registry = tmp_path / "dynamic-security.json"
    assert f"plugin_opt_config_file {registry}" in lines and "persistence false" in lines
    assert not any(line.startswith("acl_file") for line in lines)
    assert {c["username"] for c in json.loads(registry.read_text())["clients"]} == set(HUB_REPLICAS)
    acl = render_config(1884, tmp_path / "tls", tmp_path / "acl", tmp_path / "log", authz="acl").splitlines()
    assert f"acl_file {tmp_path / 'acl'}" in acl and not any(line.startswith("plugin") for line in acl)
    assert not any(line.startswith(("pid_file", "persistence_location", "autosave_interval")) for line in lines)
    # The CRL (on by default) is the one `cloud-hub pki broker-cert` wrote next to the broker certificate.
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "edgefleet.crl").write_text("")
    with_crl = render_config(1884, tmp_path / "tls", tmp_path / "acl", tmp_path / "log").splitlines()
    assert f"crlfile {tmp_path / 'tls' / 'edgefleet.crl'}" in with_crl
