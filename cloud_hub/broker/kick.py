"""`broker_authz = "acl"`: cut a revoked device's live broker connection by taking its client id over.

mosquitto 2.0 has no "disconnect this client" besides the dynamic-security plugin (`deleteClient`), and a
CRL re-read on SIGHUP only refuses *new* handshakes. What acl_file brokers do have is the rule the shipped
config relies on against client-id takeover (`use_username_as_clientid`): a client's id is its certificate
CN, and a new connection with the id of a connected client closes the old one. The hub holds the CA, so
it mints a throwaway certificate for the revoked device's CN (valid `KICK_CERT_VALIDITY`, its key never
stored: the files exist only while the TLS context loads them, in the hub's private pki folder), connects
once to every broker with a clean start and a session expiry of 0 (the device's persistent session, with
what was queued for it, is dropped too) and disconnects.

What it cannot do is keep the device off: its reconnect is accepted until the broker re-reads the CRL.
So the hub kicks again whenever a revoked device's message reaches ingest (an agent publishes its birth on
every connect; at most one kick per device per `min_interval_s`, a request inside it waits for its end),
and revoking again kicks again. A revoked device that reconnects before the reload and then stays silent
keeps its connection (with acl_file: its own desired state, and the hub's `$share` group) until the next
kick. dynsec has no such gap (docs/security.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_hub.broker.url import BrokerUrl
from cloud_hub.errors import HubError
from cloud_hub.pki.ca import HubCA, pem_private_key

log = logging.getLogger(__name__)

KICK_CERT_VALIDITY = dt.timedelta(minutes=10)


class SessionKicker:
    """The acl_file counterpart of `DynsecRegistrar`: nothing to register; `retire` kicks the device."""

    keeps_registry = False

    def __init__(
        self,
        brokers: Sequence[str],
        ca: HubCA,
        cafile: Path,
        workdir: Path,
        *,
        min_interval_s: float = 2.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.brokers = [BrokerUrl.parse(url) for url in brokers]
        self.ca = ca
        self.cafile = cafile
        self.workdir = workdir
        self.min_interval_s = min_interval_s
        self.timeout_s = timeout_s
        self.kicks = 0  # connections taken over (tests, debugging)
        self._last: dict[str, float] = {}  # device id -> monotonic time of its last kick
        self._waiting: dict[str, asyncio.Task[None]] = {}  # device id -> its next (trailing) kick
        self._tasks: set[asyncio.Task[None]] = set()

    async def register(self, device_id: str) -> None:
        """Nothing to do: the broker's acl_file grants by certificate CN."""

    async def sync(self, active: Iterable[str], revoked: Iterable[str]) -> None:
        """Nothing to do: a restarted broker has read the CRL, so revoked devices cannot be back."""

    async def retire(self, device_id: str) -> None:
        """Disconnect `device_id` from every broker now; HubError if a broker could not be reached."""
        self._last[device_id] = time.monotonic()
        certs = self._mint(device_id)
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.cafile))
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(certs / "kick.pem"), str(certs / "kick.key"))
        finally:
            for name in ("kick.key", "kick.pem"):
                (certs / name).unlink(missing_ok=True)
            certs.rmdir()
        errors: list[str] = []
        for url in self.brokers:
            if not url.tls:
                continue  # a plain development broker has no identities to take over
            try:
                await asyncio.to_thread(_take_over, url, ctx, device_id, self.timeout_s)
            except HubError as exc:
                errors.append(f"{url}: {exc}")
            else:
                self.kicks += 1
        if errors:
            raise HubError(f"could not cut {device_id!r} off: {'; '.join(errors)}")
        log.info("cut revoked device %s off %d broker(s) (client id taken over)", device_id, len(self.brokers))

    def revoked_seen(self, device_id: str) -> None:
        """A revoked device's message reached ingest: it is connected again; kick it (rate-limited)."""
        if device_id in self._waiting:
            return
        wait = self._last.get(device_id, -1e9) + self.min_interval_s - time.monotonic()
        task = asyncio.get_running_loop().create_task(self._kick_later(device_id, max(wait, 0.0)))
        self._waiting[device_id] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _kick_later(self, device_id: str, delay_s: float) -> None:
        try:
            await asyncio.sleep(delay_s)
            await self.retire(device_id)
        except HubError as exc:
            log.warning("revoked device %s is connected again and could not be cut off: %s", device_id, exc)
        finally:
            self._waiting.pop(device_id, None)

    async def aclose(self) -> None:
        """Cancel pending kicks and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _mint(self, device_id: str) -> Path:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.ca.issue(key.public_key(), device_id, client=True, validity=KICK_CERT_VALIDITY)
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder = Path(tempfile.mkdtemp(prefix="kick-", dir=self.workdir))  # 0700
        (folder / "kick.key").write_bytes(pem_private_key(key))
        (folder / "kick.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return folder


def _take_over(url: BrokerUrl, ctx: ssl.SSLContext, client_id: str, timeout_s: float) -> None:
    """Connect as `client_id` (clean start, no session kept), wait for the CONNACK, disconnect."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=False
    )
    client.tls_set_context(ctx)
    answered = threading.Event()
    reasons: list[str] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        reasons.append(str(reason) if getattr(reason, "is_failure", False) else "")
        answered.set()

    client.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho ships no annotation here
    props.SessionExpiryInterval = 0
    try:
        client.connect(url.host, url.port, keepalive=30, clean_start=True, properties=props)
    except (OSError, ssl.SSLError) as exc:
        raise HubError(f"connect failed: {exc}") from exc
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            raise HubError("no CONNACK")
        if reasons[0]:
            raise HubError(f"CONNACK {reasons[0]}")
    finally:
        client.disconnect()
        client.loop_stop()
