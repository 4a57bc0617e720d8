"""`cloud-hub serve --config hub.toml`: every HubConfig field from the file, flags given on top, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud_hub.cli import build_parser, main
from cloud_hub.cli.serve import config_from_args
from cloud_hub.config import HubConfig, load_config
from cloud_hub.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "hub" / "hub.toml"

# A value different from the default for every field, as TOML text and as the loaded value.
EVERY_FIELD: dict[str, tuple[str, Any]] = {
    "data_dir": ('"data"', None),  # relative to the file: checked apart
    "database_url": ('"postgresql://hub@db:5432/hub"', "postgresql://hub@db:5432/hub"),
    "host": ('"0.0.0.0"', "0.0.0.0"),  # a config value, nothing binds here
    "port": ("9443", 9443),
    "public_url": ('"https://hub.example.com:9443"', "https://hub.example.com:9443"),
    "server_names": ('["hub.example.com", "10.0.0.5"]', ("hub.example.com", "10.0.0.5")),
    "brokers": ('["mqtts://a:8883", "mqtts://b:8883"]', ("mqtts://a:8883", "mqtts://b:8883")),
    "device_broker_url": ('"mqtts://devices:8883"', "mqtts://devices:8883"),
    "broker_cafile": ('"/etc/edgefleet/broker-ca.pem"', Path("/etc/edgefleet/broker-ca.pem")),
    "topic_prefix": ('"acme/v1"', "acme/v1"),
    "share_group": ('"replicas"', "replicas"),
    "telemetry_interval_s": ("2.5", 2.5),
    "mqtt_keepalive_s": ("15", 15),
    "mqtt_client_id": ('"edgefleet-hub-a"', "edgefleet-hub-a"),
    "mqtt_identity": ('"edgefleet-hub-2"', "edgefleet-hub-2"),
    "broker_authz": ('"acl"', "acl"),
    "telemetry_max_per_s": ("5.0", 5.0),
    "telemetry_burst": ("100", 100),
    "mqtt_session_expiry_s": ("600", 600),
    "mqtt_receive_maximum": ("500", 500),
    "batch_max_rows": ("50", 50),
    "batch_max_delay_ms": ("20", 20),
    "telemetry_retention_s": ("3600.0", 3600.0),
    "registry_refresh_s": ("1.5", 1.5),
}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment counts as given on the command line (it keeps secrets off it): not in these tests.
    monkeypatch.delenv("EDGEFLEET_HUB_DB", raising=False)
    monkeypatch.delenv("EDGEFLEET_HUB_DATA_DIR", raising=False)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "etc" / "hub.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _serve(*argv: str) -> HubConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_every_field_is_settable_from_the_file(tmp_path: Path) -> None:
    assert set(EVERY_FIELD) == set(HubConfig.model_fields)
    path = _write(tmp_path, "".join(f"{k} = {text}\n" for k, (text, _) in EVERY_FIELD.items()))
    config = _serve("serve", "--config", str(path))
    for key, (_, value) in EVERY_FIELD.items():
        if value is not None:
            assert getattr(config, key) == value, key
            assert getattr(config, key) != HubConfig.model_fields[key].default, key
    assert config.data_dir == path.parent / "data"  # relative paths are relative to the file


def test_flags_given_override_the_file_and_flags_not_given_do_not(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'data_dir = "/srv/hub"\nhost = "0.0.0.0"\nport = 9443\nbrokers = ["mqtts://a:8883"]\n'
        'topic_prefix = "acme/v1"\nmqtt_session_expiry_s = 0\n',
    )
    config = _serve("serve", "--config", str(path), "--port", "7443", "--broker", "mqtts://b:8883")
    assert (config.port, config.brokers) == (7443, ("mqtts://b:8883",))
    assert (config.host, config.topic_prefix, config.mqtt_session_expiry_s) == ("0.0.0.0", "acme/v1", 0)
    assert config.data_dir == Path("/srv/hub")
    config = _serve("--data-dir", str(tmp_path / "elsewhere"), "serve", "--config", str(path), "--prefix", "x/v1")
    assert (config.data_dir, config.topic_prefix, config.port) == (tmp_path / "elsewhere", "x/v1", 9443)


def test_without_a_file_the_flags_and_defaults_are_as_before(tmp_path: Path) -> None:
    config = _serve("--data-dir", str(tmp_path), "serve", "--host", "::1", "--telemetry-interval", "3")
    assert config == HubConfig(data_dir=tmp_path, host="::1", telemetry_interval_s=3.0)
    assert _serve("serve") == HubConfig()


def test_unknown_key_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "port = 9443\nmqtt_session_expiry = 600\n")
    with pytest.raises(ConfigError, match=r"hub\.toml.* invalid: mqtt_session_expiry: Extra inputs are not permitted"):
        load_config(path)
    assert main(["serve", "--config", str(path)]) == 1
    assert "mqtt_session_expiry" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "match"),
    [("port = \n", "not valid TOML"), ('port = "many"\n', "port: Input should be a valid integer")],
)
def test_bad_files_are_clear_errors(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")


def test_a_flag_that_breaks_the_config_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the command line is invalid: port"):
        _serve("--data-dir", str(tmp_path), "serve", "--port", "70000")


def test_the_example_file_parses() -> None:
    config = load_config(EXAMPLE)
    assert config.brokers and config.mqtt_session_expiry_s == 86_400 and config.telemetry_retention_s == 86_400.0
    assert config.data_dir == Path("/var/lib/edgefleet-hub")


def test_authz_and_identity_flags(tmp_path: Path) -> None:
    # dynsec is the default, as the shipped broker config (deploy/mosquitto/mosquitto.conf) runs the plugin.
    assert _serve("--data-dir", str(tmp_path), "serve").broker_authz == "dynsec"
    config = _serve("--data-dir", str(tmp_path), "serve", "--broker-authz", "acl", "--mqtt-identity", "edgefleet-hub-1")
    assert (config.broker_authz, config.mqtt_identity) == ("acl", "edgefleet-hub-1")
    with pytest.raises(SystemExit):
        _serve("serve", "--broker-authz", "none")
    with pytest.raises(ConfigError, match="mqtt_identity"):
        _serve("--data-dir", str(tmp_path), "serve", "--mqtt-identity", "line-1")
