"""The systemd unit is hardened, valid, and matches the agent; the ACL template renders."""

from __future__ import annotations

import re
import shutil
import string
import subprocess
from pathlib import Path

import pytest
from deploy_support import DEPLOY, ROOT, UNIT, assert_flags_exist, unit_entries


def test_unit_is_hardened() -> None:
    svc: dict[str, list[str]] = {}
    for section, key, value in unit_entries(UNIT):
        if section == "Service":
            svc.setdefault(key, []).append(value)
    one = {k: v[-1] for k, v in svc.items()}
    expected = {
        "User": "edgefleet",
        "StateDirectory": "edgefleet",
        "ConfigurationDirectory": "edgefleet",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "SystemCallFilter": "@system-service",
        "Restart": "on-failure",
        "PrivateDevices": "no",
        "DevicePolicy": "closed",
    }
    for key, value in expected.items():
        assert one.get(key) == value, f"{key}={one.get(key)!r}, expected {value!r}"
    assert set(one["RestrictAddressFamilies"].split()) <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert "RestartSec" in one and "TimeoutStopSec" in one
    # Only what the safety cell's OS priority needs (nice/SCHED_RR, negative oom_score_adj).
    assert set(one["CapabilityBoundingSet"].split()) == {"CAP_SYS_NICE", "CAP_SYS_RESOURCE"}
    assert set(one["AmbientCapabilities"].split()) <= set(one["CapabilityBoundingSet"].split())
    allowed = " ".join(svc["DeviceAllow"])
    assert "nvidia" in allowed and "nvhost" in allowed and "/dev/nvmap" in allowed
    # The user the unit runs as is the one the sysusers file creates, in the group of the Jetson GPU nodes.
    sysusers = (DEPLOY / "systemd" / "edgefleet-sysusers.conf").read_text(encoding="utf-8")
    assert re.search(r"^u\s+edgefleet\s", sysusers, re.M) and re.search(r"^m\s+edgefleet\s+video", sysusers, re.M)
    assert one["SupplementaryGroups"] == "video"


def test_unit_type_matches_sd_notify_support() -> None:
    """Type=notify and a watchdog only if the agent actually talks to systemd."""
    one = {k: v for s, k, v in unit_entries(UNIT) if s == "Service"}
    notifies = any(
        re.search(r"sd_notify|NOTIFY_SOCKET|WATCHDOG_USEC", p.read_text(encoding="utf-8"))
        for p in (ROOT / "edge_agent").rglob("*.py")
    )
    if notifies:
        assert one["Type"] == "notify", "the agent calls sd_notify: use Type=notify (and WatchdogSec if it pings)"
    else:
        assert one["Type"] == "simple" and "WatchdogSec" not in one


def test_unit_execstart_uses_real_flags() -> None:
    exec_start = next(v for s, k, v in unit_entries(UNIT) if s == "Service" and k == "ExecStart")
    binary, *argv = exec_start.split()
    assert binary.endswith("/edge-agent") and binary.startswith("/")
    assert_flags_exist("edge_agent", argv)
    assert argv[argv.index("--config") + 1].startswith("/etc/edgefleet/"), "config lives in ConfigurationDirectory"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` on a copy whose ExecStart binary exists here (the venv is not /opt)."""
    text = UNIT.read_text(encoding="utf-8")
    binary = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert binary is not None
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={binary.group(1)}", "ExecStart=/bin/true"), encoding="utf-8")
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr
    # The only complaint about the original is the binary that is not installed on this machine.
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    allowed = f"Command {binary.group(1)} is not executable"
    assert all(allowed in line for line in lines), lines


def test_acl_template_has_only_the_prefix_placeholder() -> None:
    template = string.Template((DEPLOY / "mosquitto" / "acl.template").read_text(encoding="utf-8"))
    assert {m.group("named") or m.group("braced") for m in template.pattern.finditer(template.template)} - {None} == {
        "prefix"
    }
