"""`python -m deploy.local.demo` (what `make demo` runs): the flags, then the run."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The demo's flags."""
    demo = argparse.ArgumentParser(
        prog="python -m deploy.local.demo",
        description="run the whole system locally: broker, hub, pool, 3 agents, rollout, traffic",
    )
    demo.add_argument("--short", action="store_true", help="a ~40 s run (CI)")
    demo.add_argument("--keep-running", action="store_true", help="leave everything up until Ctrl-C")
    demo.add_argument("--workdir", type=Path, help="where the demo's files go (default: a new temp dir)")
    demo.add_argument("--no-live", action="store_true", help="plain step lines instead of the live view")
    demo.add_argument("--summary-json", type=Path, help="write the machine-readable summary here")
    return demo


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags and run the demo; its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from deploy.local.demo.run import run_demo

    try:
        return run_demo(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
