"""Device-side helpers for the hub's tests: CSRs, provisioning over HTTPS, paho device clients, messages."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from protocols.messages import (
    DeviceBirth,
    DeviceLoad,
    DeviceOffline,
    HardwareSummary,
    LoadReport,
    PipelineLoad,
    ProvisionRequest,
    RouteCounts,
)
from protocols.topics import Topics

TOPICS = Topics()
HARDWARE = HardwareSummary(platform="x86_64-cpu", model="test box", cpu_count=2, ram_mb=4096)


def make_csr(
    key: ec.EllipticCurvePrivateKey | None = None, cn: str = "ignored"
) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """An EC key and a PEM CSR for it (the subject is ignored by the hub)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def client_ssl(cafile: Path) -> ssl.SSLContext:
    """Trust the hub CA only."""
    return ssl.create_default_context(cafile=str(cafile))


async def provision(
    hub_url: str, cafile: Path, token: str, *, device_id: str | None = None, csr_pem: str | None = None
) -> tuple[int, dict[str, Any], ec.EllipticCurvePrivateKey]:
    """POST a ProvisionRequest; (status, JSON body, the key whose CSR was sent)."""
    key, csr = make_csr()
    request = ProvisionRequest(claim_token=token, csr_pem=csr_pem or csr, hardware=HARDWARE, device_id=device_id)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{hub_url}/api/v1/provision", data=request.model_dump_json(), ssl=client_ssl(cafile)) as resp,
    ):
        return resp.status, await resp.json(), key


def write_identity(directory: Path, key: ec.EllipticCurvePrivateKey, cert_pem: str) -> tuple[Path, Path]:
    """Write a device's certificate and key; (certfile, keyfile)."""
    directory.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = directory / "device.pem", directory / "device.key"
    certfile.write_text(cert_pem)
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    keyfile.chmod(0o600)
    return certfile, keyfile


def birth(device_id: str, boot_id: str = "boot-1") -> bytes:
    """A birth message."""
    return (
        DeviceBirth(
            device_id=device_id,
            boot_id=boot_id,
            agent_version="0.1.0",
            sent_at=time.time(),
            hardware=HARDWARE,
            telemetry_interval_s=10.0,
        )
        .model_dump_json()
        .encode()
    )


def will(device_id: str) -> bytes:
    """The last will."""
    return DeviceOffline(device_id=device_id, reason="lost").model_dump_json().encode()


def load_report(device_id: str, seq: int, boot_id: str = "boot-1", p99_ms: float = 12.5) -> bytes:
    """A load report with one pipeline."""
    return (
        LoadReport(
            device_id=device_id,
            boot_id=boot_id,
            seq=seq,
            sent_at=time.time(),
            interval_s=10.0,
            pipelines=(
                PipelineLoad(
                    name="detect",
                    model="tiny-cnn",
                    version="2",
                    priority="standard",
                    requests_per_s=5.0,
                    routes=RouteCounts(local=50),
                    p50_ms=4.0,
                    p99_ms=p99_ms,
                ),
            ),
            device=DeviceLoad(cpu_percent=20.0, ram_used_mb=1000, ram_total_mb=4096, gpu_source="unavailable"),
        )
        .model_dump_json()
        .encode()
    )


class DeviceClient:
    """A paho v5 device connected with its certificate, with the `offline` will set."""

    def __init__(
        self, broker: Any, cafile: Path, cert: tuple[Path, Path], client_id: str, *, keepalive: int = 30
    ) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.tls_set_context(_ctx(cafile, cert))
        self.client.will_set(TOPICS.state(client_id), will(client_id), qos=1, retain=True)
        self.received: list[mqtt.MQTTMessage] = []
        self._connected = threading.Event()
        self.reason: Any = None
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self.received.append(m)
        self.client.connect(broker.host, broker.port, keepalive)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("device did not connect")

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.reason = reason
        self._connected.set()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait until the broker has it (QoS 1: PUBACK)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(10)

    def close(self) -> None:
        """Disconnect cleanly (no will)."""
        self.client.disconnect()
        self.client.loop_stop()


def _ctx(cafile: Path, cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile))
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx
