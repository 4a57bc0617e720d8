"""Subcommands the fleet package adds to `edge-agent` (found by edge_agent.cli's extension list)."""

from __future__ import annotations

from typing import Any

from edge_agent.fleet.provision import add_provision_parser


def register(subparsers: Any) -> None:
    """Add `edge-agent provision`."""
    add_provision_parser(subparsers)
