"""schemathesis against the agent's and the hub's OpenAPI documents, on real server processes.

Every generated request (valid and invalid) must get no 5xx and a response that matches the document:
status code, content type, headers, and body schema. The number of examples per operation is bounded so
both runs fit in `make test`; raise EDGEFLEET_FUZZ_EXAMPLES for a longer run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import schemathesis
from agent_support import AgentProcess, start_agent
from hypothesis import HealthCheck, settings
from rig import free_port
from schemathesis import Case

from cloud_hub.api.openapi import openapi_document as hub_document
from edge_agent.http.openapi import openapi_document as agent_document
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("EDGEFLEET_FUZZ_EXAMPLES", "12"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]
CALLS: dict[str, dict[int, int]] = {}


def _count(server: str, status: int) -> None:
    by_status = CALLS.setdefault(server, {})
    by_status[status] = by_status.get(status, 0) + 1


# Package uploads are raw bytes, like application/octet-stream.
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")
agent_schema = schemathesis.openapi.from_dict(agent_document())
hub_schema = schemathesis.openapi.from_dict(hub_document())


@pytest.fixture(scope="module")
def agent_process() -> Iterator[AgentProcess]:
    """`edge-agent serve --standalone` on the zoo."""
    process = start_agent(
        ["serve", "--standalone", "--model-dir", str(PACKAGES_DIR), "--trust", str(ZOO_PUBLIC_KEY_FILE), "--port", "0"]
    )
    yield process
    assert process.stop() == 0, "".join(process.output)


@dataclass
class HubProcess:
    """A `cloud-hub serve` child: its URL, CA file and operator token."""

    url: str
    cafile: Path
    token: str
    log: Path


@pytest.fixture(scope="module")
def hub_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """`cloud-hub serve` (SQLite, no broker) on a free port."""
    data = tmp_path_factory.mktemp("hub-fuzz")
    log = data / "hub.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        argv = [sys.executable, "-m", "cloud_hub", "--data-dir", str(data / "hub"), "serve", "--port", str(free_port())]
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while (found := re.search(r"edgefleet hub at (https://\S+)", log.read_text())) is None:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        token = (data / "hub" / "operator-token").read_text().strip()
        yield HubProcess(found.group(1), data / "hub" / "pki" / "ca.pem", token, log)
    finally:
        proc.terminate()
        proc.wait(20)
    text = log.read_text()
    assert "Traceback" not in text, text[-5000:]  # no handler failed behind a 4xx either


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    """One keep-alive session for every generated request."""
    with requests.Session() as session:
        yield session


@agent_schema.parametrize()
@FUZZ
def test_agent_api_conforms(case: Case, agent_process: AgentProcess, http: requests.Session) -> None:
    # Most generated names are unknown (404): steer two thirds of the cases to the zoo's real models so
    # the fuzzed bodies reach the decoder, the scheduler and the runtime.
    params = case.path_parameters or {}
    if "model" in params and len(repr(case.body)) % 3:
        params["model"] = ["tiny-mlp", "tiny-cnn"][len(repr(case.body)) % 2]
        if "version" in params:
            params["version"] = {"tiny-mlp": "1", "tiny-cnn": "2"}[params["model"]]
    response = case.call_and_validate(base_url=agent_process.url, session=http, checks=CHECKS, timeout=30)
    _count("agent", response.status_code)


@hub_schema.parametrize()
@FUZZ
def test_hub_api_conforms(case: Case, hub_process: HubProcess, http: requests.Session) -> None:
    headers = {"Authorization": f"Bearer {hub_process.token}"}
    response = case.call_and_validate(
        base_url=hub_process.url,
        session=http,
        headers=headers,
        checks=CHECKS,
        verify=str(hub_process.cafile),
        timeout=30,
    )
    _count("hub", response.status_code)


def test_report_inputs_tried() -> None:
    """The counts the closing note quotes (pytest -s shows them)."""
    print("schemathesis requests by status:", {k: dict(sorted(v.items())) for k, v in CALLS.items()})
