"""A real `edge-agent serve --standalone` process: tritonclient, plain JSON, bad input, concurrency."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
from typing import Any

import aiohttp
import numpy as np
import pytest
from agent_support import MODELS, AgentProcess, Reference, sample

from protocols.binary import HEADER_LENGTH, decode_response, encode_request

httpclient = pytest.importorskip("tritonclient.http")

pytestmark = pytest.mark.slow


def _triton(agent: AgentProcess) -> Any:
    return httpclient.InferenceServerClient(agent.url.removeprefix("http://"), connection_timeout=10)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("rows", [1, 8])
def test_tritonclient_defaults_match_onnxruntime(
    agent: AgentProcess, reference: Reference, model: str, rows: int
) -> None:
    client = _triton(agent)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
    batch = sample(model, rows, seed=rows)
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)  # binary by default
    result = client.infer(model, [tensor], request_id="r1")
    out = result.as_numpy(MODELS[model][2])
    np.testing.assert_array_equal(out, reference(model, batch))
    assert result.get_response()["id"] == "r1"
    meta = client.get_model_metadata(model)
    assert meta["inputs"][0]["shape"] == [-1, *MODELS[model][1]]
    client.close()


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("rows", [1, 8])
async def test_plain_json_matches_onnxruntime(agent: AgentProcess, reference: Reference, model: str, rows: int) -> None:
    batch = sample(model, rows, seed=10 + rows)
    body = {"inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32", "data": batch.tolist()}]}
    async with aiohttp.ClientSession() as session:
        payload = io.BytesIO(json.dumps(body).encode())
        async with session.post(f"{agent.url}/v2/models/{model}/infer", data=payload) as resp:
            assert resp.status == 200
            data = await resp.json()
    (out,) = data["outputs"]
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    # JSON carries float32 values as decimal text that round-trips exactly.
    np.testing.assert_array_equal(got, reference(model, batch))
    assert data["model_version"] == MODELS[model][0]


async def test_gzip_body_and_raw_binary_request(agent: AgentProcess, reference: Reference) -> None:
    batch = sample("tiny-mlp", 2, seed=3)
    body, length = encode_request(inputs={"input": batch})
    async with aiohttp.ClientSession() as session:
        headers = {HEADER_LENGTH: str(length), "Content-Encoding": "gzip"}
        async with session.post(
            f"{agent.url}/v2/models/tiny-mlp/infer", data=gzip.compress(body), headers=headers
        ) as resp:
            assert resp.status == 200
            raw = await resp.read()
            _, arrays = decode_response(raw, int(resp.headers[HEADER_LENGTH]))
        np.testing.assert_array_equal(arrays["logits"], reference("tiny-mlp", batch))
        one = batch[:1]
        async with session.post(
            f"{agent.url}/v2/models/tiny-mlp/infer", data=one.tobytes(), headers={HEADER_LENGTH: "0"}
        ) as resp:
            assert resp.status == 200
            _, arrays = decode_response(await resp.read(), int(resp.headers[HEADER_LENGTH]))
        np.testing.assert_array_equal(arrays["logits"], reference("tiny-mlp", one))


def _json_body(**tensor: Any) -> bytes:
    base = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    base.update(tensor)
    return json.dumps({"inputs": [base]}).encode()


_GOOD_BINARY, _GOOD_LENGTH = encode_request(inputs={"input": np.zeros((1, 64), np.float32)})
BAD_REQUESTS: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    ("unknown model", "nope", _json_body(), {}, 404, "Request for unknown model: 'nope' is not found"),
    ("unknown version", "tiny-mlp/versions/9", _json_body(), {}, 404, "'tiny-mlp' version 9 is not found"),
    (
        "missing input",
        "tiny-mlp",
        json.dumps({"inputs": [{"name": "other", "shape": [1], "datatype": "FP32", "data": [0]}]}).encode(),
        {},
        400,
        "missing input 'input'",
    ),
    (
        "extra input",
        "tiny-mlp",
        json.dumps(
            {
                "inputs": [
                    {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64},
                    {"name": "more", "shape": [1], "datatype": "FP32", "data": [0.0]},
                ]
            }
        ).encode(),
        {},
        400,
        "unexpected input",
    ),
    ("wrong datatype", "tiny-mlp", _json_body(datatype="FP64"), {}, 400, "datatype"),
    ("wrong shape", "tiny-mlp", _json_body(shape=[1, 32], data=[0.0] * 32), {}, 400, "shape"),
    ("batch too large", "tiny-mlp", _json_body(shape=[9, 64], data=[0.0] * 64 * 9), {}, 400, "batch size 9"),
    ("data/shape mismatch", "tiny-mlp", _json_body(data=[0.0] * 63), {}, 400, "input"),
    ("short binary buffer", "tiny-mlp", _GOOD_BINARY[:-4], {HEADER_LENGTH: str(_GOOD_LENGTH)}, 400, ""),
    ("bad header length", "tiny-mlp", _GOOD_BINARY, {HEADER_LENGTH: "abc"}, 400, HEADER_LENGTH),
    ("header length past body", "tiny-mlp", _GOOD_BINARY, {HEADER_LENGTH: "100000"}, 400, ""),
    ("non-JSON", "tiny-mlp", b"{not json", {}, 400, ""),
    (
        "unknown output",
        "tiny-mlp",
        json.loads(_json_body()) and json.dumps({**json.loads(_json_body()), "outputs": [{"name": "nope"}]}).encode(),
        {},
        400,
        "unknown output",
    ),
    (
        "bad priority",
        "tiny-mlp",
        json.dumps({**json.loads(_json_body()), "parameters": {"priority": -1}}).encode(),
        {},
        400,
        "priority",
    ),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
async def test_bad_input_gets_clear_error_and_server_keeps_serving(
    agent: AgentProcess, case: tuple[str, str, bytes, dict[str, str], int, str]
) -> None:
    _, path, body, headers, status, text = case
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{agent.url}/v2/models/{path}/infer", data=body, headers=headers) as resp:
            assert resp.status == status
            error = (await resp.json())["error"]
            assert isinstance(error, str) and error
            assert text in error
        async with session.post(f"{agent.url}/v2/models/tiny-mlp/infer", data=_json_body()) as resp:
            assert resp.status == 200


async def test_oversize_body_is_413(agent: AgentProcess) -> None:
    big = b"x" * (64 * 1024 * 1024 + 1)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{agent.url}/v2/models/tiny-mlp/infer", data=io.BytesIO(big)) as resp:
            assert resp.status == 413
            assert "error" in await resp.json()
        bomb = gzip.compress(b"\0" * (80 * 1024 * 1024))
        async with session.post(
            f"{agent.url}/v2/models/tiny-mlp/infer", data=io.BytesIO(bomb), headers={"Content-Encoding": "gzip"}
        ) as resp:
            assert resp.status == 413
        async with session.post(f"{agent.url}/v2/models/tiny-mlp/infer", data=_json_body()) as resp:
            assert resp.status == 200


async def test_500_concurrent_requests_from_64_clients_no_cross_talk(agent: AgentProcess, reference: Reference) -> None:
    count, clients = 500, 64
    rows = [1 + i % 3 for i in range(count)]
    inputs = [sample("tiny-mlp", r, seed=1000 + i) for i, r in enumerate(rows)]
    expected = [reference("tiny-mlp", x) for x in inputs]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    results: dict[int, np.ndarray[Any, Any]] = {}

    async def worker() -> None:
        async with aiohttp.ClientSession() as session:
            while not queue.empty():
                i = queue.get_nowait()
                body, length = encode_request(inputs={"input": inputs[i]}, id=str(i))
                headers = {HEADER_LENGTH: str(length)}
                async with session.post(f"{agent.url}/v2/models/tiny-mlp/infer", data=body, headers=headers) as r:
                    assert r.status == 200
                    header, arrays = decode_response(await r.read(), int(r.headers[HEADER_LENGTH]))
                assert header["id"] == str(i)
                results[i] = arrays["logits"]

    await asyncio.gather(*(worker() for _ in range(clients)))
    assert len(results) == count
    for i in range(count):
        np.testing.assert_array_equal(results[i], expected[i])
    async with aiohttp.ClientSession() as session, session.get(f"{agent.url}/metrics") as resp:
        text = await resp.text()
    # Batching actually happened: some batch held more than one row.
    assert 'edgefleet_batch_size_rows_bucket{le="1.0",name="tiny-mlp",version="1"}' in text


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests_and_json_outputs(
    agent: AgentProcess, reference: Reference, algorithm: str
) -> None:
    client = _triton(agent)
    batch = sample("tiny-cnn", 3, seed=7)
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=False)
    output = httpclient.InferRequestedOutput("scores", binary_data=False)
    result = client.infer(
        "tiny-cnn",
        [tensor],
        outputs=[output],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,  # the agent answers uncompressed; the client accepts that
        timeout=5_000_000,
        priority=1,
    )
    np.testing.assert_array_equal(result.as_numpy("scores"), reference("tiny-cnn", batch))
    client.close()
