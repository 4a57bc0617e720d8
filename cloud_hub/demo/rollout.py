"""Model push and the rollout through the real `cloud-hub models` / `cloud-hub rollouts` commands.

The commands are looked up in cloud-hub's own parser first: a checkout without them (issue 6 not merged)
makes the demo skip the step and say so, never pretend.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from cloud_hub.demo.fleet import FLEET_LABEL, MODEL, ZOO_KEY, ZOO_PACKAGES, hub_cli
from cloud_hub.demo.procs import DemoError, Supervisor


def subcommands(path: tuple[str, ...] = ()) -> set[str]:
    """Sub-commands of `cloud-hub [path...]` in this install."""
    from cloud_hub.cli import build_parser

    parser = build_parser()
    for name in path:
        parser_or_none = _subparsers(parser).get(name)
        if parser_or_none is None:
            return set()
        parser = parser_or_none
    return set(_subparsers(parser))


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def missing(command: tuple[str, ...]) -> str | None:
    """Why `cloud-hub COMMAND` cannot be used here, or None if it exists."""
    for depth in range(len(command)):
        if command[depth] not in subcommands(command[:depth]):
            return f"this cloud-hub has no `{' '.join(command[: depth + 1])}` command (issue 6 not merged)"
    return None


async def push_models(sup: Supervisor, hub_dir: Path) -> str | None:
    """Trust the zoo's publisher key, push tiny-cnn v1 and v2; None, or why it was skipped."""
    reason = missing(("models", "push"))
    if reason:
        return reason
    if not missing(("models", "trust-key")):
        await sup.run("trust-zoo", hub_cli(hub_dir, "models", "trust-key", str(ZOO_KEY)))
    else:
        # No CLI for it: the registry trusts every key in its trusted-publishers folder (re-read at push).
        pubs = hub_dir / "trusted-publishers"
        pubs.mkdir(mode=0o700, exist_ok=True)
        (pubs / "zoo-signing.pub").write_bytes(ZOO_KEY.read_bytes())
    for version in ("1", "2"):
        package = ZOO_PACKAGES / MODEL / version
        await sup.run(f"push-{MODEL}-v{version}", hub_cli(hub_dir, "models", "push", str(package)))
    return None


async def create_rollout(sup: Supervisor, hub_dir: Path, bake: str) -> str:
    """`cloud-hub rollouts create` of tiny-cnn v2 with a canary and two waves; the rollout id."""
    reason = missing(("rollouts", "create"))
    if reason:
        raise DemoError(reason)
    argv = hub_cli(
        hub_dir, "rollouts", "create", "--model", MODEL, "--version", "2", "--selector", "=".join(FLEET_LABEL),
        "--canary", "1", "--waves", "50%,100%", "--bake", bake, "--json",
    )  # fmt: skip
    out = await sup.run("rollout-create", argv)
    try:
        body = json.loads(out[out.index("{") :])
        rollout = body.get("rollout", body)
        return str(rollout["id"])
    except (ValueError, KeyError, TypeError):
        found = re.search(r"\bro[-_][0-9A-Za-z]+", out)
        if found is None:
            raise DemoError(f"cannot find the rollout id in:\n{out}") from None
        return found.group(0)
