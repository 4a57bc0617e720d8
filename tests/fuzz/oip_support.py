"""What the two Open Inference Protocol fuzz modules share: the agent under test, one HTTP session, strict JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from agent_support import AgentProcess, start_agent

from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE


def strict_json(text: str) -> None:
    """Parse `text`, refusing bare NaN / Infinity (not JSON for browsers, Go or Rust clients)."""

    def refuse(token: str) -> None:
        raise AssertionError(f"bare {token} in a JSON response")

    json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def oip_agent() -> Iterator[AgentProcess]:
    """`edge-agent serve --standalone` on the zoo."""
    args = ["serve", "--standalone", "--model-dir", str(PACKAGES_DIR), "--trust", str(ZOO_PUBLIC_KEY_FILE)]
    process = start_agent([*args, "--port", "0"])
    yield process
    assert process.stop() == 0, "".join(process.output)
    assert "Traceback" not in "".join(process.output)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    """One keep-alive session for every generated request."""
    with requests.Session() as session:
        yield session
