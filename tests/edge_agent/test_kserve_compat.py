"""KServe's Python SDK calls (`kserve.InferenceRESTClient`, 0.21) against a real agent over real HTTP.

The real SDK runs in test_kserve_sdk.py, from its own venv (`.venv-kserve`): in the project's venv it would
pull ~30 packages (pandas, kubernetes, grpcio-tools, fastapi, uvicorn) and downgrade protobuf. These tests
send the very requests its `InferenceRESTClient` sends (read from kserve 0.21.0's `inference_client.py` and
`protocol/infer_type.py`) and read the answers the way it reads them, so they run everywhere.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest_asyncio
from agent_support import AgentProcess, Reference, sample

from protocols.binary import HEADER_LENGTH, decode_response


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client session per test."""
    async with aiohttp.ClientSession() as http:
        yield http


def _kserve_request(model: str, array: np.ndarray[Any, Any], *, binary: bool) -> tuple[bytes, dict[str, str]]:
    """`InferRequest(model_name, ...).to_rest()` as InferenceRESTClient.infer posts it."""
    tensor: dict[str, Any] = {"name": "input", "shape": list(array.shape), "datatype": "FP32"}
    raw = array.astype("<f4").tobytes()
    if binary:
        tensor["parameters"] = {"binary_data_size": len(raw)}
    else:
        tensor["data"] = array.ravel().tolist()
    head = {"id": str(uuid.uuid4()), "model_name": model, "inputs": [tensor]}
    text = json.dumps(head).encode()
    if binary:
        return text + raw, {HEADER_LENGTH: str(len(text)), "content-type": "application/octet-stream"}
    return text, {"content-type": "application/json"}


async def test_kserve_infer_json_and_binary(
    agent: AgentProcess, session: aiohttp.ClientSession, reference: Reference
) -> None:
    batch = sample("tiny-mlp", 3, seed=5)
    for binary in (False, True):
        body, headers = _kserve_request("tiny-mlp", batch, binary=binary)
        async with session.post(f"{agent.url}/v2/models/tiny-mlp/infer", data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            content = await resp.read()
            # InferResponse.from_bytes(content, header length or the whole body)
            length = int(resp.headers.get(HEADER_LENGTH, len(content)))
        header, arrays = decode_response(content, length)
        sent_id = json.loads(body[: int(headers.get(HEADER_LENGTH, len(body)))])["id"]
        assert header["model_name"] == "tiny-mlp" and header["id"] == sent_id
        np.testing.assert_array_equal(arrays["logits"], reference("tiny-mlp", batch))


async def test_kserve_live_ready_and_model_ready(agent: AgentProcess, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{agent.url}/v2/health/live") as resp:
        assert resp.status == 200 and (await resp.json()).get("live") is True  # is_server_live
    async with session.get(f"{agent.url}/v2/health/ready") as resp:
        assert resp.status == 200 and (await resp.json()).get("ready") is True  # is_server_ready
    async with session.get(f"{agent.url}/v2/models/tiny-cnn/ready") as resp:
        assert resp.status == 200  # is_model_ready (V2: the status is the answer)
        assert await resp.json() == {"name": "tiny-cnn", "ready": True}
    async with session.get(f"{agent.url}/v2/models/nope/ready") as resp:
        # _construct_http_status_error reads `error` from a JSON body
        assert resp.status == 404 and resp.content_type == "application/json"
        assert "nope" in (await resp.json())["error"]
