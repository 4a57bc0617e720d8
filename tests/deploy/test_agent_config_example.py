"""The reference agent config in deploy/ is valid for the agent that ships with it."""

from __future__ import annotations

from pathlib import Path

from edge_agent.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "agent" / "agent.toml"


def test_reference_agent_config_validates() -> None:
    config = load_config(EXAMPLE)
    classes = {p.name: (p.priority, p.effective_offload) for p in config.pipelines}
    assert classes == {"collision": ("safety", "never"), "shelf": ("best_effort", "overflow")}
    assert config.http.host == "127.0.0.1"
    assert config.fleet is not None and config.pools
    assert config.state_dir == Path("/var/lib/edgefleet")


def test_systemd_unit_points_at_the_reference_config_path() -> None:
    unit = (EXAMPLE.parents[1] / "systemd" / "edge-agent.service").read_text(encoding="utf-8")
    assert "/etc/edgefleet/agent.toml" in unit
