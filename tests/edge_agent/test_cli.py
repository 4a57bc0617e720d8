"""The `edge-agent` command and its config file: parsing, errors, serve --config with a store, shutdown."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from agent_support import start_agent

from edge_agent.cli import build_parser, main
from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import ConfigError
from edge_agent.store import ModelStore
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE

CONFIG = f"""
state_dir = "state"
model_dirs = ["{PACKAGES_DIR}"]
trusted_keys = ["{ZOO_PUBLIC_KEY_FILE}"]

[http]
port = 0

[safety_cell]
port = 0

[batching]
max_queue_delay_ms = 1.5
models = {{ tiny-cnn = {{ max_batch_size = 4 }} }}

[runtime]
type = "onnxruntime"
providers = ["cpu"]
intra_op_threads = 1

[[pipelines]]
name = "collision"
model = "tiny-cnn"
priority = "safety"
deadline_ms = 50
"""


def test_load_config_resolves_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    assert config.state_dir == tmp_path / "state"
    assert config.http.host == "127.0.0.1" and config.http.max_body_bytes == 64 << 20
    assert config.batching.models["tiny-cnn"].max_batch_size == 4
    assert config.pipelines[0].effective_offload == "never"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("bogus = 1\nstate_dir = 's'", "bogus"),
        ("state_dir = 's'\nverify_packages = false", "standalone"),
        ("model_dirs = ['m']", "state_dir is required"),
        ("state_dir = 's'\n[[pipelines]]\nname='a'\nmodel='m'\npriority='safety'\noffload='overflow'", "never leave"),
        ("state_dir = 's'\n[[pipelines]]\nname='a'\nmodel='m'\ndeadline_ms=0", "deadline_ms"),
        ("state_dir = 's'\n[runtime]\ntype='magic'", "runtime"),
        ("state_dir = [", "not valid TOML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_config(path)


def test_every_config_field_is_described() -> None:
    def check(model: type) -> None:
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            assert field.description, f"{model.__name__}.{name} has no description"

    from edge_agent.config import BatchingConfig, HttpConfig, ModelBatching

    for model in (AgentConfig, HttpConfig, BatchingConfig, ModelBatching):
        check(model)


def test_parser_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    _, sub = build_parser()
    assert {"serve", "doctor"} <= set(sub.choices)
    assert main(["serve"]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(["serve", "--standalone", "--model-dir", str(PACKAGES_DIR)]) == 2
    assert "--no-verify" in capsys.readouterr().err


def test_help_is_fast_and_python_m_works() -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "edge_agent", "--help"], capture_output=True, text=True, check=True
    )
    assert "serve" in out.stdout
    assert "onnxruntime" not in out.stderr  # heavy runtimes are not imported for --help


@pytest.mark.slow
def test_serve_config_uses_the_store_and_restart_reads_the_pointer(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG)
    agent = start_agent(["serve", "--config", str(path)])
    try:
        with urllib.request.urlopen(f"{agent.url}/v2/models/collision") as resp:
            assert b'"versions":["2"]' in resp.read()  # the store serves the active version only
        with urllib.request.urlopen(f"{agent.url}/v2/models/tiny-cnn/versions/2/ready") as resp:
            assert resp.status == 200
    finally:
        assert agent.stop() == 0
    store = ModelStore(tmp_path / "state" / "models")
    assert store.versions("tiny-cnn") == ["1", "2"] and store.active("tiny-cnn") == "2"
    store.activate("tiny-cnn", "1")  # as an operator's rollback would, while the agent is down
    agent = start_agent(["serve", "--config", str(path)])
    try:
        with urllib.request.urlopen(f"{agent.url}/v2/models/tiny-cnn") as resp:
            assert b'"versions":["1"]' in resp.read()
    finally:
        assert agent.stop() == 0
    assert "shutting down" in "".join(agent.output)


@pytest.mark.slow
def test_tampered_package_fails_start_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "pkgs" / "tiny-mlp" / "1"
    shutil.copytree(PACKAGES_DIR / "tiny-mlp" / "1", bad)
    with (bad / "model.onnx").open("r+b") as fh:
        fh.seek(64)
        fh.write(b"\x00\x01")
    args = ["serve", "--standalone", "--model-dir", str(tmp_path / "pkgs"), "--trust", str(ZOO_PUBLIC_KEY_FILE)]
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", *args, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "failed verification" in proc.stderr and "sha256" in proc.stderr


def test_doctor_is_wired(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[Path | None] = []

    async def fake_doctor(zoo_dir: Path | None, out: object) -> int:
        calls.append(zoo_dir)
        return 3

    import edge_agent.doctor

    monkeypatch.setattr(edge_agent.doctor, "run_doctor", fake_doctor)
    assert main(["doctor", "--zoo-dir", "/x"]) == 3
    assert calls == [Path("/x")]


async def test_standalone_models_get_the_pool_deadline_and_the_flag_overrides_it() -> None:
    from edge_agent.cli import _serve_config
    from edge_agent.serving.core import ServingCore
    from edge_agent.store import collect

    parser, _ = build_parser()
    base = ["serve", "--standalone", "--model-dir", str(PACKAGES_DIR), "--trust", str(ZOO_PUBLIC_KEY_FILE)]
    assert _serve_config(parser.parse_args(base)).expose_deadline_ms == 60_000
    config = _serve_config(parser.parse_args([*base, "--deadline-ms", "250"]))
    core = ServingCore(config)
    packages, active = collect(config)
    await core.start(packages, active)
    try:
        assert {p.deadline_ms for p in core.pipelines().values()} == {250}
    finally:
        await core.aclose()
