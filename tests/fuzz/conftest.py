"""Fuzz tests: the targets (fuzz_targets.py) and strategies are importable by name; the security helpers too."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("cloud_hub", "edge_agent", "security", "fuzz"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.append(str(_TESTS / _folder))

# The hub and broker fixtures of the security checks serve the MQTT storms as well.
from fixtures_support import api, hub, hub_broker, hub_data_dir, hub_identity  # noqa: E402, F401

# The agent and session of the two Open Inference Protocol fuzz modules.
from oip_support import http, oip_agent  # noqa: E402, F401
