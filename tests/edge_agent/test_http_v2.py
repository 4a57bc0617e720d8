"""The V2 HTTP app in-process: metadata, health, pipelines, binary/JSON outputs, compression, metrics, OpenAPI."""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

import numpy as np
import pytest
from agent_support import Reference, sample, standalone_config
from aiohttp import web
from aiohttp.test_utils import TestClient

from edge_agent.app import Agent
from edge_agent.errors import Unavailable
from edge_agent.http.keys import CORE_KEY
from protocols.binary import HEADER_LENGTH, decode_response, encode_request
from protocols.pipeline import PipelineSpec

Client = TestClient[web.Request, web.Application]


async def test_server_metadata_and_health(client: Client) -> None:
    resp = await client.get("/v2")
    meta = await resp.json()
    assert meta["name"] == "edgefleet-edge-agent" and "binary_tensor_data" in meta["extensions"]
    # The OIP REST bodies (KServe's SDK reads them; tritonclient looks only at the status).
    for path, body in (
        ("/v2/health/live", {"live": True}),
        ("/v2/health/ready", {"ready": True}),
        ("/v2/models/tiny-cnn/ready", {"name": "tiny-cnn", "ready": True}),
        ("/v2/models/tiny-cnn/versions/1/ready", {"name": "tiny-cnn", "ready": True}),
    ):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert await resp.json() == body


async def test_model_metadata_with_and_without_version(client: Client) -> None:
    meta = await (await client.get("/v2/models/tiny-cnn")).json()
    assert meta == {
        "name": "tiny-cnn",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 64, 64]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert (await client.get("/v2/models/tiny-cnn/versions/1")).status == 200
    resp = await client.get("/v2/models/tiny-cnn/versions/7")
    # Triton's texts, which Triton's examples and user code match on
    assert resp.status == 404
    assert (await resp.json())["error"] == "Request for unknown model: 'tiny-cnn' version 7 is not found"
    resp = await client.get("/v2/models/missing/ready")
    assert resp.status == 404
    assert (await resp.json())["error"] == "Request for unknown model: 'missing' is not found"
    resp = await client.get("/no/such/route")
    assert resp.status == 404 and "error" in await resp.json()


async def test_explicit_version_and_json_output_selection(client: Client, reference: Reference) -> None:
    batch = sample("tiny-cnn", 2)
    body, length = encode_request(inputs={"input": batch}, outputs=["scores"], binary=False, id="abc")
    assert length is None
    resp = await client.post("/v2/models/tiny-cnn/versions/2/infer", data=body)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
    data = await resp.json()
    assert data["id"] == "abc" and data["model_version"] == "2"
    got = np.asarray(data["outputs"][0]["data"], np.float32).reshape(data["outputs"][0]["shape"])
    np.testing.assert_array_equal(got, reference("tiny-cnn", batch))
    resp = await client.post("/v2/models/tiny-cnn/versions/1/infer", data=body)
    assert (await resp.json())["model_version"] == "1"


async def test_binary_output_per_output_flag(client: Client) -> None:
    header = {
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        "parameters": {"priority": 1, "timeout": 5_000_000},
    }
    resp = await client.post("/v2/models/tiny-mlp/infer", data=json.dumps(header))
    assert resp.status == 200
    length = int(resp.headers[HEADER_LENGTH])
    meta, arrays = decode_response(await resp.read(), length)
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 40
    assert arrays["logits"].shape == (1, 10)


async def test_deflate_body(client: Client) -> None:
    body, length = encode_request(inputs={"input": sample("tiny-mlp", 3)})
    resp = await client.post(
        "/v2/models/tiny-mlp/infer",
        data=zlib.compress(body),
        headers={"Content-Encoding": "deflate", HEADER_LENGTH: str(length)},
    )
    assert resp.status == 200


@pytest.mark.parametrize(
    ("parameters", "text"),
    [({"priority": "high"}, "priority"), ({"timeout": -5}, "timeout"), ({"sequence_id": 3}, "sequence")],
)
async def test_scheduling_parameters_are_validated(client: Client, parameters: dict[str, Any], text: str) -> None:
    body = {
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}],
        "parameters": parameters,
    }
    resp = await client.post("/v2/models/tiny-mlp/infer", data=json.dumps(body))
    assert resp.status == 400 and text in (await resp.json())["error"]


async def test_metrics_count_requests_batches_and_queue_depth(client: Client) -> None:
    body, length = encode_request(inputs={"input": sample("tiny-mlp", 2)})
    await client.post("/v2/models/tiny-mlp/infer", data=body, headers={HEADER_LENGTH: str(length)})
    await client.post("/v2/models/nope/infer", data=body, headers={HEADER_LENGTH: str(length)})
    text = await (await client.get("/metrics")).text()
    assert 'edgefleet_requests_total{code="200",model="tiny-mlp"} 1.0' in text
    assert 'edgefleet_requests_total{code="404",model="<unknown>"} 1.0' in text
    assert 'edgefleet_request_errors_total{kind="NotFound",model="<unknown>"} 1.0' in text
    # `model` is always the V2 name; model-version series carry name and version, joined by pipeline_info
    assert 'edgefleet_queue_depth_rows{name="tiny-mlp",version="1"} 0.0' in text
    assert 'edgefleet_model_ready{name="tiny-cnn",version="2"} 1.0' in text
    assert 'edgefleet_batch_size_rows_count{name="tiny-mlp",version="1"}' in text
    assert 'edgefleet_inference_duration_seconds_count{name="tiny-mlp",version="1"}' in text
    assert 'edgefleet_pipeline_info{model="tiny-cnn",name="tiny-cnn",version="2"} 1.0' in text
    assert 'model="tiny-mlp:1"' not in text
    assert "edgefleet_request_latency_seconds_bucket" in text


async def test_openapi_document(client: Client) -> None:
    doc = await (await client.get("/v2/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert {"InferRequest", "InferResponse", "ModelMetadata", "ServerMetadata", "ErrorResponse"} <= set(
        doc["components"]["schemas"]
    )
    assert "/v2/models/{model}/versions/{version}/infer" in doc["paths"]
    assert (await client.get("/openapi.json")).status == 200


async def test_pipelines_are_v2_model_names(aiohttp_client: Any) -> None:
    config = standalone_config(
        expose_models=False,
        pipelines=[
            PipelineSpec(name="collision", model="tiny-cnn", version="1", priority="safety", deadline_ms=50),
            PipelineSpec(name="shelf", model="tiny-cnn", priority="best_effort", deadline_ms=500),
        ],
    )
    agent = Agent(config)
    app = agent.http
    client: Client = await aiohttp_client(app)
    await agent.startup
    assert (await client.get("/v2/models/tiny-cnn")).status == 404
    meta = await (await client.get("/v2/models/collision")).json()
    assert meta["name"] == "collision" and meta["versions"] == ["1"]
    assert (await (await client.get("/v2/models/shelf")).json())["versions"] == ["1", "2"]
    body, length = encode_request(inputs={"input": sample("tiny-cnn", 1)})
    resp = await client.post("/v2/models/collision/infer", data=body, headers={HEADER_LENGTH: str(length)})
    header, _ = decode_response(await resp.read(), int(resp.headers[HEADER_LENGTH]))
    assert header["model_name"] == "collision" and header["model_version"] == "1"
    resp = await client.post("/v2/models/collision/versions/2/infer", data=body, headers={HEADER_LENGTH: str(length)})
    assert resp.status == 404
    assert agent.core.pipelines()["collision"].effective_offload == "never"


async def test_doomed_best_effort_is_shed_before_its_body_is_read_and_the_connection_kept(aiohttp_client: Any) -> None:
    config = standalone_config(
        expose_models=False,
        scheduler={"queue_limits": {"best_effort": 0}},  # never queued locally, and standalone never offloads
        pipelines=[
            PipelineSpec(name="collision", model="tiny-cnn", priority="safety", deadline_ms=500),
            PipelineSpec(name="shelf", model="tiny-cnn", priority="best_effort", deadline_ms=500),
        ],
    )
    agent = Agent(config)
    app = agent.http
    client: Client = await aiohttp_client(app)
    await agent.startup
    body, length = encode_request(inputs={"input": sample("tiny-cnn", 8)})
    for _ in range(3):
        resp = await client.post("/v2/models/shelf/infer", data=body, headers={HEADER_LENGTH: str(length)})
        assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
        assert "queue full" in (await resp.json())["error"]
    # aiohttp read and discarded the unread bodies (lingering read): the client just goes on with the next one.
    resp = await client.post("/v2/models/collision/infer", data=body, headers={HEADER_LENGTH: str(length)})
    assert resp.status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'edgefleet_routes_total{model="shelf",route="rejected"} 3.0' in metrics


async def test_not_ready_until_loaded_then_503_with_retry_after(aiohttp_client: Any) -> None:
    agent = Agent(standalone_config())
    app = agent.http
    client: Client = await aiohttp_client(app)
    assert (await client.get("/v2/health/live")).status == 200
    await agent.startup
    assert (await client.get("/v2/health/ready")).status == 200
    core = agent.core
    core.models()["tiny-mlp"]["1"].ready = False
    assert (await client.get("/v2/health/ready")).status == 400
    assert (await client.get("/v2/models/tiny-mlp/ready")).status == 400
    body, length = encode_request(inputs={"input": sample("tiny-mlp", 1)})
    resp = await client.post("/v2/models/tiny-mlp/infer", data=body, headers={HEADER_LENGTH: str(length)})
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert "not ready" in (await resp.json())["error"]


async def test_body_limit_is_configurable(aiohttp_client: Any) -> None:
    agent = Agent(standalone_config(http={"max_body_bytes": 1024}))
    app = agent.http
    client: Client = await aiohttp_client(app)
    await agent.startup
    body, length = encode_request(inputs={"input": sample("tiny-mlp", 8)})
    resp = await client.post("/v2/models/tiny-mlp/infer", data=body, headers={HEADER_LENGTH: str(length)})
    assert resp.status == 413 and "limit" in (await resp.json())["error"]
    compressed = zlib.compress(b" " * 4096)
    resp = await client.post("/v2/models/tiny-mlp/infer", data=compressed, headers={"Content-Encoding": "deflate"})
    assert resp.status == 413


async def test_switch_active_version_while_serving(client: Client) -> None:
    core = client.server.app[CORE_KEY]
    body, length = encode_request(inputs={"input": sample("tiny-cnn", 1)})
    headers = {HEADER_LENGTH: str(length)}

    async def call() -> str:
        resp = await client.post("/v2/models/tiny-cnn/infer", data=body, headers=headers)
        assert resp.status == 200
        header, _ = decode_response(await resp.read(), int(resp.headers[HEADER_LENGTH]))
        return str(header["model_version"])

    first = [asyncio.ensure_future(call()) for _ in range(20)]
    await asyncio.sleep(0)
    core.activate("tiny-cnn", "1")
    unloading = asyncio.ensure_future(core.unload("tiny-cnn", "2"))  # in-flight requests on 2 finish first
    assert set(await asyncio.gather(*first)) <= {"1", "2"}
    await unloading
    assert await call() == "1"
    assert (await client.get("/v2/models/tiny-cnn/versions/2")).status == 404
    with pytest.raises(Unavailable):
        await core.unload("tiny-cnn", "1")


async def test_405_names_the_allowed_methods(client: Client) -> None:
    resp = await client.get("/v2/models/tiny-mlp/infer")
    assert resp.status == 405 and "error" in await resp.json()
    assert resp.headers["Allow"] == "POST"


async def test_json_never_carries_nan_and_fp32_beyond_range_is_refused(client: Client) -> None:
    def body(values: str) -> str:
        tensor = f'{{"name":"input","shape":[1,64],"datatype":"FP32","data":[{values}]}}'
        return f'{{"inputs":[{tensor}],"outputs":[{{"name":"logits","parameters":{{"binary_data":false}}}}]}}'

    resp = await client.post("/v2/models/tiny-mlp/infer", data=body(",".join(["1e39"] + ["0"] * 63)))
    assert resp.status == 400 and "FP32 'data' holds a number out of range" in (await resp.json())["error"]
    resp = await client.post("/v2/models/tiny-mlp/infer", data=body(",".join(["NaN"] + ["0"] * 63)))
    assert resp.status == 200
    raw = await resp.read()
    length = int(resp.headers[HEADER_LENGTH])  # NaN logits went binary although JSON was asked for
    json.loads(raw[:length], parse_constant=lambda token: pytest.fail(f"bare {token} in JSON"))
    _, arrays = decode_response(raw, length)
    assert np.isnan(arrays["logits"]).all()


async def test_invalid_requests_are_not_counted_as_rejected(client: Client) -> None:
    tensor = {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [0.0, 1.0, 2.0]}  # wrong shape
    resp = await client.post("/v2/models/tiny-mlp/infer", data=json.dumps({"inputs": [tensor]}))
    assert resp.status == 400
    text = await (await client.get("/metrics")).text()
    assert 'edgefleet_routes_total{model="tiny-mlp",route="invalid"} 1.0' in text
    assert 'route="rejected"' not in text  # only admission's 503s are rejections
    (load,) = [p for p in client.app[CORE_KEY].stats.snapshot(1.0) if p.name == "tiny-mlp"]
    assert load.routes.rejected == 0 and load.errors == 1
