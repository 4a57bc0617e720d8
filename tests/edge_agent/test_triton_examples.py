"""Triton's example clients' calls, against a real agent over real HTTP, with tritonclient 2.73.

The calls of triton-inference-server/client src/python/examples `simple_http_infer_client.py`,
`simple_http_aio_infer_client.py`, `simple_http_async_infer_client.py`, `simple_http_health_metadata.py`,
`simple_http_model_control.py`, `simple_http_string_infer_client.py` and `image_client.py` are written
here (no example file is vendored; none is fetched at run time), with their checks. Where the agent
answers differently from Triton on purpose the test says so; the agent runs with `--server-name triton`,
as the examples check the name (the default is `edgefleet-edge-agent`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from agent_support import AgentProcess, Reference
from triton_support import triton_agent

httpclient = pytest.importorskip("tritonclient.http")
aioclient = pytest.importorskip("tritonclient.http.aio")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """A standalone agent serving the zoo plus `simple` and `simple_string`, named as Triton's examples check."""
    with triton_agent(tmp_path_factory.mktemp("triton"), "--server-name", "triton") as process:
        yield process


def _client(agent: AgentProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=agent.url.removeprefix("http://"))


def _simple_inputs(binary0: bool = True, binary1: bool = False) -> tuple[list[object], np.ndarray, np.ndarray]:
    in0 = np.arange(16, dtype=np.int32).reshape(1, 16)
    in1 = np.ones((1, 16), dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(in0, binary_data=binary0)
    inputs[1].set_data_from_numpy(in1, binary_data=binary1)
    return inputs, in0, in1


def test_simple_http_infer_client(triton: AgentProcess) -> None:
    client = _client(triton)
    inputs, in0, in1 = _simple_inputs()
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    for compression in (None, "gzip", "deflate"):
        results = client.infer(
            "simple",
            inputs,
            outputs=outputs,
            query_params={"test_1": 1, "test_2": 2},
            headers={"header_1": "value_1"},
            request_compression_algorithm=compression,
            response_compression_algorithm=compression,
        )
        np.testing.assert_array_equal(results.as_numpy("OUTPUT0"), in0 + in1)
        np.testing.assert_array_equal(results.as_numpy("OUTPUT1"), in0 - in1)
    statistics = client.get_inference_statistics(model_name="simple", headers={"header_1": "value_1"})
    assert len(statistics["model_stats"]) == 1
    stats = statistics["model_stats"][0]
    assert stats["name"] == "simple" and stats["version"] == "1"
    assert stats["inference_stats"]["success"]["count"] >= 3 and stats["inference_count"] >= 3
    assert stats["execution_count"] >= 1 and stats["batch_stats"][0]["batch_size"] >= 1
    everything = client.get_inference_statistics()
    assert {"simple", "simple_string", "tiny-cnn"} <= {m["name"] for m in everything["model_stats"]}


def test_simple_http_async_infer_client(triton: AgentProcess) -> None:
    client = httpclient.InferenceServerClient(url=triton.url.removeprefix("http://"), concurrency=4)
    inputs, in0, in1 = _simple_inputs(binary0=False, binary1=True)
    pending = [client.async_infer("simple", inputs, request_id=str(i)) for i in range(8)]
    for request in pending:
        result = request.get_result()
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), in0 + in1)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), in0 - in1)
    client.close()


def test_simple_http_aio_infer_client(triton: AgentProcess) -> None:
    async def main() -> None:
        client = aioclient.InferenceServerClient(url=triton.url.removeprefix("http://"))
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("simple")
            metadata = await client.get_model_metadata("simple")
            assert metadata["name"] == "simple"
            config = await client.get_model_config("simple")
            assert config["name"] == "simple" and config["max_batch_size"] == 8
            inputs, in0, in1 = _simple_inputs()
            inputs = [aioclient.InferInput(i.name(), i.shape(), i.datatype()) for i in inputs]
            inputs[0].set_data_from_numpy(in0)
            inputs[1].set_data_from_numpy(in1, binary_data=False)
            results = await client.infer("simple", inputs, outputs=[aioclient.InferRequestedOutput("OUTPUT0")])
            np.testing.assert_array_equal(results.as_numpy("OUTPUT0"), in0 + in1)
            assert results.as_numpy("OUTPUT1") is None  # only OUTPUT0 was asked for
            statistics = await client.get_inference_statistics("simple")
            assert len(statistics["model_stats"]) == 1
        finally:
            await client.close()

    asyncio.run(main())


def test_simple_http_health_metadata(triton: AgentProcess) -> None:
    client = _client(triton)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("simple")
    metadata = client.get_server_metadata()
    # The example checks for "triton": the agent names itself unless told otherwise (docs/triton-compat.md)
    assert metadata["name"] == "triton"
    assert {"binary_tensor_data", "classification", "model_repository", "statistics", "logging"} <= set(
        metadata["extensions"]
    )
    metadata = client.get_model_metadata("simple")
    assert metadata["name"] == "simple" and metadata["platform"] == "onnxruntime_onnx"
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'wrong_model_name' is not found"):
        client.get_model_metadata("wrong_model_name")
    assert not client.is_model_ready("wrong_model_name")
    settings = client.get_log_settings()
    assert settings["log_info"] is True and settings["log_verbose_level"] == 0
    updated = client.update_log_settings({"log_verbose_level": 1})
    assert updated["log_verbose_level"] == 1
    assert client.update_log_settings({"log_verbose_level": 0})["log_verbose_level"] == 0
    with pytest.raises(InferenceServerException, match="log_file cannot be set"):
        client.update_log_settings({"log_file": "/tmp/x.log"})


def test_simple_http_model_control(triton: AgentProcess) -> None:
    client = _client(triton)
    index = {(m["name"], m["version"]): m["state"] for m in client.get_model_repository_index()}
    assert index[("simple", "1")] == "READY" and index[("tiny-cnn", "2")] == "READY"
    client.load_model("simple")
    assert client.is_model_ready("simple")
    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    assert client.is_server_ready()  # an explicitly unloaded model does not make the server unready
    assert ("simple", "1") not in {(m["name"], m["version"]) for m in client.get_model_repository_index()}
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'simple'"):
        client.infer("simple", _simple_inputs()[0])
    client.load_model("simple")
    assert client.is_model_ready("simple")
    inputs, in0, in1 = _simple_inputs()
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), in0 + in1)
    with pytest.raises(InferenceServerException, match="failed to load 'wrong_model_name'"):
        client.load_model("wrong_model_name")
    # The example's override configs: a malformed one must fail with Triton's "failed to load"; a well-formed one
    # reloads the model with max_batch_size 16 (the one field an override may set: the package's files are
    # signed), and a 16-row batch then runs.
    with pytest.raises(InferenceServerException, match="failed to load 'simple'"):
        client.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}')
    with pytest.raises(
        InferenceServerException, match=r"failed to load 'simple': override config field\(s\) \['input'\]"
    ):
        client.load_model("simple", config='{"input": []}')
    assert client.get_model_config("simple")["max_batch_size"] == 8 and client.is_model_ready("simple")
    client.load_model("simple", config='{"max_batch_size":"16"}')
    assert client.get_model_config("simple")["max_batch_size"] == 16 and client.is_model_ready("simple")
    rows0, rows1 = np.arange(256, dtype=np.int32).reshape(16, 16), np.ones((16, 16), dtype=np.int32)
    batch = [httpclient.InferInput("INPUT0", [16, 16], "INT32"), httpclient.InferInput("INPUT1", [16, 16], "INT32")]
    batch[0].set_data_from_numpy(rows0)
    batch[1].set_data_from_numpy(rows1)
    np.testing.assert_array_equal(client.infer("simple", batch).as_numpy("OUTPUT0"), rows0 + rows1)
    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    client.load_model("simple")  # without an override: the package's own limit again
    assert client.get_model_config("simple")["max_batch_size"] == 8 and client.is_model_ready("simple")


def test_simple_http_string_infer_client(triton: AgentProcess) -> None:
    client = _client(triton)
    in0 = np.arange(16, dtype=np.int32).reshape(1, 16)
    in1 = np.ones((1, 16), dtype=np.int32)
    for binary in (True, False):
        inputs = [
            httpclient.InferInput("INPUT0", [1, 16], "BYTES"),
            httpclient.InferInput("INPUT1", [1, 16], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(np.array([str(x).encode() for x in in0.ravel()], object).reshape(1, 16))
        inputs[1].set_data_from_numpy(
            np.array([str(x).encode() for x in in1.ravel()], object).reshape(1, 16), binary_data=binary
        )
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
        results = client.infer("simple_string", inputs, outputs=outputs)
        out0, out1 = results.as_numpy("OUTPUT0"), results.as_numpy("OUTPUT1")
        assert out0.dtype == object and type(out0[0][0]) is (bytes if binary else str)  # tritonclient's JSON: str
        for i in range(16):
            assert int(out0[0][i]) == in0[0][i] + in1[0][i]
            assert int(out1[0][i]) == in0[0][i] - in1[0][i]


def test_simple_http_string_infer_client_identity(triton: AgentProcess) -> None:
    """The example's `simple_identity` calls: text with an embedded NUL, then 4-byte blobs, binary and JSON."""
    client = _client(triton)
    null_chars = np.array([b"he\x00llo" for _ in range(16)], dtype=np.object_).reshape(1, 16)
    blobs = np.array([b"\x00\x01\x02\x03" for _ in range(16)], dtype=np.bytes_).reshape(1, 16)
    for data in (null_chars, blobs):
        for binary in (True, False):
            tensor = httpclient.InferInput("INPUT0", list(data.shape), "BYTES")
            tensor.set_data_from_numpy(data, binary_data=binary)
            output = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
            got = client.infer("simple_identity", [tensor], outputs=[output]).as_numpy("OUTPUT0")
            if data.dtype != np.object_:  # the example's checks, per case
                assert np.array_equal(data, np.char.encode(got.astype(str)))
            elif binary:
                assert np.array_equal(data, got)
            else:
                assert np.array_equal(data, np.array([str(x).encode() for x in got.flatten()]).reshape(1, 16))


def test_bytes_identity_round_trip(triton: AgentProcess) -> None:
    client = _client(triton)
    text = np.array([[b"hello"], ["wörld".encode()], [b""]], dtype=object)
    for binary in (True, False):
        tensor = httpclient.InferInput("text", [3, 1], "BYTES")
        tensor.set_data_from_numpy(text, binary_data=binary)
        echo = client.infer("text-echo", [tensor], outputs=[httpclient.InferRequestedOutput("echo", binary)])
        got = [[v if type(v) is bytes else v.encode() for v in row] for row in echo.as_numpy("echo").tolist()]
        assert got == text.tolist()  # was [[b"b'hello'"], ...]; tritonclient gives JSON BYTES as str


def test_image_client_tiny_cnn(triton: AgentProcess, reference: Reference) -> None:
    """image_client.py -m tiny-cnn -c 3: metadata + config checks, then classification (top-k)."""
    client = _client(triton)
    metadata, config = client.get_model_metadata("tiny-cnn"), client.get_model_config("tiny-cnn")
    # parse_model's checks
    assert len(metadata["inputs"]) == 1 and len(metadata["outputs"]) == 1 and len(config["input"]) == 1
    assert metadata["outputs"][0]["datatype"] == "FP32" and config["max_batch_size"] == 8
    assert len(metadata["inputs"][0]["shape"]) == 3 + 1  # CHW plus the batch axis
    assert config["input"][0]["format"] == "FORMAT_NCHW" and config["input"][0]["dims"] == [3, 64, 64]
    assert config["input"][0]["data_type"] == "TYPE_FP32" and config["output"][0]["dims"] == [4]
    assert config["output"][0]["label_filename"] == "labels.txt"
    image = np.random.default_rng(3).random((2, 3, 64, 64), dtype=np.float32)
    tensor = httpclient.InferInput("input", list(image.shape), "FP32")
    tensor.set_data_from_numpy(image)
    output = httpclient.InferRequestedOutput("scores", binary_data=True, class_count=3)
    result = client.infer("tiny-cnn", [tensor], outputs=[output]).as_numpy("scores")
    assert result.shape == (2, 3)
    scores = reference("tiny-cnn", image)
    for row, expected in zip(result, scores, strict=True):
        parsed = ["".join(chr(x) for x in item).split(":") for item in row]  # as image_client reads them
        top = list(np.argsort(-expected, kind="stable")[:3])
        assert [int(p[1]) for p in parsed] == top
        assert [float(p[0]) for p in parsed] == pytest.approx(sorted(expected, reverse=True)[:3], abs=1e-6)
        labels = ("clear", "pedestrian", "vehicle", "obstacle")  # the package's labels.txt
        assert [p[2] for p in parsed] == [labels[i] for i in top]  # image_client prints cls[0], cls[1], cls[2]
    with pytest.raises(InferenceServerException, match="'classification' must be a positive integer"):
        client.infer("tiny-cnn", [tensor], outputs=[httpclient.InferRequestedOutput("scores", class_count=-1)])


def test_shared_memory_and_sequences_are_refused(triton: AgentProcess) -> None:
    client = _client(triton)
    with pytest.raises(InferenceServerException, match="shared memory is not supported"):
        client.get_system_shared_memory_status()
    with pytest.raises(InferenceServerException, match="shared memory is not supported"):
        client.register_system_shared_memory("r", "/r", 64)
    inputs, _, _ = _simple_inputs()
    with pytest.raises(InferenceServerException, match="sequence"):
        client.infer("simple", inputs, sequence_id=7, sequence_start=True)


def test_fleet_devices_refuse_explicit_model_control(tmp_path: Path) -> None:
    from edge_agent.config import AgentConfig
    from edge_agent.errors import InvalidInput
    from edge_agent.serving.control import ModelControl
    from edge_agent.serving.core import ServingCore

    control = ModelControl(ServingCore(AgentConfig(state_dir=tmp_path)))
    with pytest.raises(InvalidInput, match="follow the hub's desired state"):
        asyncio.run(control.load("tiny-cnn"))
    with pytest.raises(InvalidInput, match="follow the hub's desired state"):
        asyncio.run(control.unload("tiny-cnn"))
