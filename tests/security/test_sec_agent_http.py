"""The agent's local HTTP endpoint: loopback by default, and a bearer token when it is exposed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_support import standalone_config, start_agent

from edge_agent.app import Agent
from edge_agent.cli import build_parser
from edge_agent.config import AgentConfig, HttpConfig, load_config
from edge_agent.errors import ConfigError
from edge_agent.http.auth import is_loopback
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE

TOKEN = "agent-token-4f1c9e2b7a6d3c5e8f90"


def _token_file(tmp_path: Path, token: str = TOKEN, mode: int = 0o600) -> Path:
    path = tmp_path / "http-token"
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_defaults_bind_loopback() -> None:
    assert HttpConfig().host == "127.0.0.1" and AgentConfig(standalone=True).http.host == "127.0.0.1"
    assert HttpConfig().token_file is None
    parser, _ = build_parser()
    assert parser.parse_args(["serve"]).host == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "10.0.0.5", "edge.example.com"))


@pytest.mark.slow
def test_a_started_agent_listens_on_loopback_only() -> None:
    agent = start_agent(
        ["serve", "--standalone", "--model-dir", str(PACKAGES_DIR), "--trust", str(ZOO_PUBLIC_KEY_FILE), "--port", "0"]
    )
    try:
        port = int(agent.url.rsplit(":", 1)[1])
        assert agent.url.startswith("http://127.0.0.1:")
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing else (no 0.0.0.0, no ::)
    finally:
        assert agent.stop() == 0


async def test_token_guards_every_route_but_the_health_probes(aiohttp_client: Any, tmp_path: Path) -> None:
    agent = Agent(standalone_config(http=HttpConfig(token_file=_token_file(tmp_path))))
    app = agent.http
    client = await aiohttp_client(app)
    await agent.startup
    good = {"Authorization": f"Bearer {TOKEN}"}
    bad = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong-token-123456789"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ]
    infer = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    guarded = [
        ("GET", "/v2"),
        ("GET", "/v2/models/tiny-mlp"),
        ("GET", "/v2/models/tiny-mlp/ready"),
        ("GET", "/v2/models/tiny-mlp/versions/1"),
        ("GET", "/v2/models/tiny-mlp/versions/1/ready"),
        ("POST", "/v2/models/tiny-mlp/infer"),
        ("POST", "/v2/models/tiny-mlp/versions/1/infer"),
        ("GET", "/metrics"),
        ("GET", "/v2/openapi.json"),
        ("GET", "/openapi.json"),
        ("GET", "/no/such/route"),  # unknown routes answer 401 too: the route table is not probed for free
    ]
    for method, path in guarded:
        for headers in bad:
            resp = await client.request(method, path, headers=headers, json=infer if method == "POST" else None)
            assert resp.status == 401, (method, path, headers)
            assert set(await resp.json()) == {"error"}
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        resp = await client.request(method, path, headers=good, json=infer if method == "POST" else None)
        assert resp.status == (404 if path == "/no/such/route" else 200), (method, path)
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert (await client.get(path)).status == 200


def test_token_file_must_be_usable(tmp_path: Path) -> None:
    cases = [
        ("missing", None),
        ("short", "abc"),
        ("spaces", "a" * 10 + " " + "b" * 10),
        ("empty", ""),
        ("bin", "\xff" * 20),
    ]
    for name, content in cases:
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        with pytest.raises(ConfigError, match="token_file"):
            Agent(standalone_config(http=HttpConfig(token_file=path)))


def test_exposed_without_token_warns_and_the_token_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    Agent(standalone_config(http=HttpConfig(host="0.0.0.0")))
    assert any(r.levelno == logging.WARNING and "without a token" in r.getMessage() for r in caplog.records)
    caplog.clear()
    Agent(standalone_config())
    Agent(standalone_config(http=HttpConfig(host="0.0.0.0", token_file=_token_file(tmp_path))))
    assert not any("without a token" in r.getMessage() for r in caplog.records)
    caplog.clear()
    loose = _token_file(tmp_path, mode=0o644)
    Agent(standalone_config(http=HttpConfig(token_file=loose)))
    assert any("readable by group or others" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text


def test_token_file_in_the_config_is_relative_to_the_config(tmp_path: Path) -> None:
    _token_file(tmp_path)
    config = tmp_path / "agent.toml"
    config.write_text('standalone = true\n[http]\ntoken_file = "http-token"\n')
    assert load_config(config).http.token_file == tmp_path / "http-token"


@pytest.mark.slow
def test_tritonclient_passes_the_token_on_every_call(tmp_path: Path) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    _token_file(tmp_path)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'standalone = true\nmodel_dirs = ["{PACKAGES_DIR}"]\ntrusted_keys = ["{ZOO_PUBLIC_KEY_FILE}"]\n'
        '[http]\nport = 0\ntoken_file = "http-token"\n'
    )
    agent = start_agent(["--log-level", "DEBUG", "serve", "--config", str(config)])
    try:
        client = httpclient.InferenceServerClient(agent.url.removeprefix("http://"), connection_timeout=10)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert client.is_server_live() and client.is_server_ready()  # probes stay open
        assert client.is_model_ready("tiny-mlp", headers=headers)
        assert client.get_model_metadata("tiny-mlp", headers=headers)["name"] == "tiny-mlp"
        batch = np.zeros((2, 64), dtype=np.float32)
        tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = client.infer("tiny-mlp", [tensor], headers=headers)
        assert result.as_numpy("logits").shape[0] == 2
        with pytest.raises(InferenceServerException, match="missing bearer token"):
            client.infer("tiny-mlp", [tensor])
        with pytest.raises(InferenceServerException, match="invalid token"):
            client.get_model_metadata("tiny-mlp", headers={"Authorization": "Bearer nope-nope-nope-nope"})
        client.close()
    finally:
        assert agent.stop() == 0
    assert TOKEN not in "".join(agent.output)  # DEBUG logs of a whole session never show it
