"""Fault-injection points for the crash-safety tests (test-only, off unless an environment variable says so).

`EDGEFLEET_TEST_PAUSE_AT=point[,point...]` makes the reconciler stop for good at the named points: it prints
`EDGEFLEET_TEST_PAUSED <point>` on stdout and waits forever, so a test can `kill -9` the agent at exactly that
moment. Serving carries on meanwhile. Points, in the order a rollout reaches them:

    download      after the first chunk of a download is on disk (the .part file is partial)
    after_download, after_verify, after_install, after_prepare
    before_switch  prepared and warm, the policy allows the switch, nothing switched yet
    during_switch  the store's active pointer names the new version; routing still goes to the old one
    after_switch   routing switched; the old version is not unloaded yet

The variable is read when a point is reached, never cached, and has no other effect.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

__all__ = ["PAUSE_ENV", "POINTS", "checkpoint"]

log = logging.getLogger(__name__)

PAUSE_ENV = "EDGEFLEET_TEST_PAUSE_AT"
POINTS = (
    "download",
    "after_download",
    "after_verify",
    "after_install",
    "after_prepare",
    "before_switch",
    "during_switch",
    "after_switch",
)


async def checkpoint(point: str) -> None:
    """Pause forever here if the test environment names `point`; otherwise return at once."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or point not in {p.strip() for p in wanted.split(",")}:
        return
    log.warning("test fault injection: reconciler paused at %s", point)
    print(f"EDGEFLEET_TEST_PAUSED {point}", file=sys.stdout, flush=True)
    await asyncio.Event().wait()
