"""schemathesis against another implementation's Open Inference Protocol document, on a real agent.

The document is KServe 0.21.0's V2 OpenAPI, generated from its FastAPI app (tests/fuzz/data/, see its
`info.description`): an independent description of the protocol, not the agent's own. The official OIP
REST spec (kserve/open-inference-protocol) could not be fetched here. KServe documents its errors as FastAPI's
422, the agent answers Triton's 400/404/503, so status codes are not checked against it; what is checked:
no 5xx, every 200 body conforms to KServe's schema, and every body is strict JSON (no NaN/Infinity).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import schemathesis
from agent_support import AgentProcess
from hypothesis import HealthCheck, settings
from oip_support import strict_json
from schemathesis import Case

pytestmark = pytest.mark.slow

DOCUMENT = json.loads((Path(__file__).parent / "data" / "kserve-0.21-v2-openapi.json").read_text(encoding="utf-8"))
schema = schemathesis.openapi.from_dict(DOCUMENT)
FUZZ = settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)


@schema.parametrize()
@FUZZ
def test_agent_answers_kserve_documented_v2(case: Case, oip_agent: AgentProcess, http: requests.Session) -> None:
    params = case.path_parameters or {}
    if "model_name" in params and len(repr(case.body)) % 3:
        params["model_name"] = ["tiny-mlp", "tiny-cnn", "text-echo"][len(repr(case.body)) % 3]
        if "model_version" in params:
            params["model_version"] = {"tiny-mlp": "1", "tiny-cnn": "2", "text-echo": "1"}[params["model_name"]]
    response = case.call(base_url=oip_agent.url, session=http, timeout=30)
    assert response.status_code < 500, response.text[:500]
    if response.headers.get("Content-Type", "").startswith("application/json") and response.content:
        strict_json(response.text)
    if response.status_code == 200:
        case.validate_response(response, checks=[schemathesis.checks.response_schema_conformance])
