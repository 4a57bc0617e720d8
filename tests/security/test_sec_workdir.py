"""Issue 15 item 7: the local stack's logs (the demo's --workdir) hold secrets, so nobody else reads them.

A real hub started by the stack's supervisor (first start: it prints the new operator token to stderr,
captured in logs/hub-0.log), a real claim (`cloud-hub claims create` prints the join line with the claim
token) and the broker from `cloud-hub pki broker-cert`, in a workdir that is world-readable itself: every
file that holds either secret must be readable by its owner only, or sit in a folder others cannot enter.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from deploy.local import stack
from deploy.local.broker import start_broker
from deploy.local.broker_config import DEFAULT_PREFIX
from deploy.local.procs import Supervisor

pytestmark = pytest.mark.slow


def _reachable_by_others(path: Path, top: Path) -> bool:
    """Whether a user other than the owner can read `path` (every folder up to `top` enterable, file readable)."""
    if not path.stat().st_mode & stat.S_IROTH:
        return False
    folder = path.parent
    while True:
        if not folder.stat().st_mode & stat.S_IXOTH:
            return False
        if folder == top:
            return True
        folder = folder.parent


async def test_no_secret_in_a_file_others_can_read(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    workdir.mkdir()
    workdir.chmod(0o755)  # as `--workdir` might be
    (workdir / "logs").mkdir(mode=0o755)  # left over from an older run
    (workdir / "logs" / "hub-0.log").write_text("old run\n")
    os.chmod(workdir / "logs" / "hub-0.log", 0o644)
    sup = Supervisor(workdir)
    try:
        hub_dir, tls = workdir / "hub", workdir / "tls"
        await stack.make_pki(sup, hub_dir, tls)
        _, port = await start_broker(sup, workdir, tls, DEFAULT_PREFIX)
        await stack.start_hub(sup, hub_dir, port)
        out = await sup.run("claim", stack.hub_cli(hub_dir, "claims", "create", "--expires", "1h"))
    finally:
        sup.stop_all()
    token = (hub_dir / "operator-token").read_text().strip()
    claim = next(w for line in out.splitlines() for w in line.split() if w.startswith("efc_"))
    holders = [
        p for p in workdir.rglob("*") if p.is_file() and (token in (t := p.read_text(errors="replace")) or claim in t)
    ]
    assert any(p.parent.name == "logs" for p in holders), holders  # the logs do hold them
    exposed = [str(p) for p in holders if _reachable_by_others(p, workdir)]
    print(f"secret holders in the workdir: {len(holders)}, readable by others: {len(exposed)}")
    assert exposed == []
