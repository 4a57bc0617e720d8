"""The flags of `cloud-hub demo` (kept free of heavy imports: `cloud-hub --help` stays fast)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `cloud-hub demo`."""
    demo = sub.add_parser("demo", help="run the whole system locally: broker, hub, pool, 3 agents, rollout, traffic")
    demo.add_argument("--short", action="store_true", help="a ~40 s run (CI)")
    demo.add_argument("--keep-running", action="store_true", help="leave everything up until Ctrl-C")
    demo.add_argument("--workdir", type=Path, help="where the demo's files go (default: a new temp dir)")
    demo.add_argument("--no-live", action="store_true", help="plain step lines instead of the live view")
    demo.add_argument("--summary-json", type=Path, help="write the machine-readable summary here")
