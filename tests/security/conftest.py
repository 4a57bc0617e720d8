"""Fixtures of the security checks: a real hub over HTTPS (SQLite), its broker; helpers of the other suites."""

from __future__ import annotations

import sys
from pathlib import Path

# The hub's and the agent's test helpers (devices_support, hub_support, agent_support) are importable by name.
_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("cloud_hub", "edge_agent", "security"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.append(str(_TESTS / _folder))

from fixtures_support import api, hub, hub_broker, hub_data_dir, hub_identity  # noqa: E402, F401
