"""The hub's MQTT v5 link to one broker: paho-mqtt 2.x driven by the asyncio loop (no paho thread).

paho's socket callbacks register the socket with the loop (`add_reader` -> `loop_read`, `add_writer` ->
`loop_write`) and a 1 s task calls `loop_misc` for keepalive, as in paho's asyncio example and Home
Assistant's MQTT client. Measured in bench/ingest.py against `loop_start()`: messages are handled on the
loop thread with no thread hop and no GIL hand-off per message. The client is `LeanClient`
(paho_client.py): buffered reads and a direct (topic, payload) path for plain publishes. SUBACK/PUBACK
are awaited with one Future per message id, removed in `finally`; every (re)connect resubscribes; an
authentication failure stops retrying; other failures reconnect with jittered exponential backoff.

Persistent session (`session_expiry_s`): the link connects with `clean_start=False` and a Session Expiry
Interval under a stable `client_id`, so the broker keeps its subscriptions and queues QoS 1 messages while
the link is away (mosquitto: up to `max_queued_messages`). Resubscribing on every connect stays: it is
harmless when the session was present, and needed after a mosquitto 2.0.11 restart, which restores a
persisted `$share/...` subscription as a plain one that matches nothing (docs/reliability.md).

Acknowledge after commit (`manual_ack=True`): QoS 1 messages are not PUBACKed on receipt; their ids
collect until the owner calls `take_acks()` (before it commits what those messages produced) and then the
returned function (after the commit). A crash in between leaves them unacknowledged, so the broker sends
them again on the next connect of the session. The link announces `receive_maximum` so the broker may
have that many unacknowledged messages in flight (mosquitto's default for a client that says nothing: 20).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import select
import ssl
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.broker.paho_client import LeanClient
from cloud_hub.broker.url import AUTH_FAILURES, AuthenticationFailed, BrokerLinkError, BrokerUrl
from cloud_hub.errors import ConfigError

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]


def _nothing() -> None:
    pass


# Packets read per readable event before yielding to the event loop.
READ_BATCH = 500


class BrokerLink:
    """Connects, subscribes to `subscriptions` on every connect, and feeds each message to `on_message`."""

    def __init__(
        self,
        url: BrokerUrl,
        *,
        subscriptions: Sequence[tuple[str, int]],
        on_message: MessageHandler,
        ssl_context: ssl.SSLContext | None = None,
        client_id: str | None = None,
        keepalive_s: int = 30,
        timeout_s: float = 10.0,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        on_connected: Callable[[bool], None] | None = None,
        session_expiry_s: int | None = None,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        on_pending_ack: Callable[[], None] | None = None,
    ) -> None:
        if url.tls and ssl_context is None:
            raise ConfigError(f"{url} needs a TLS context")
        if manual_ack and any(qos > 1 for _, qos in subscriptions):
            raise ConfigError("manual_ack supports QoS 0/1 subscriptions only")
        if session_expiry_s is not None and not client_id:
            raise ConfigError("a persistent session needs a stable client_id")
        self.url = url
        self.subscriptions = tuple(subscriptions)
        self.on_message = on_message
        self.keepalive_s = keepalive_s
        self.timeout_s = timeout_s
        self.backoff = (backoff_min_s, backoff_max_s)
        self.on_connected = on_connected
        self.connected = asyncio.Event()
        self.failure: BrokerLinkError | None = None
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._lost: asyncio.Future[ReasonCode | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._misc: asyncio.Task[None] | None = None
        self._closing = False
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.manual_ack = manual_ack
        self.on_pending_ack = on_pending_ack
        self.session_present: bool | None = None  # CONNACK's flag of the last connect
        self._unacked: list[int] = []  # QoS 1 message ids received on this connection, not yet acknowledged
        self._epoch = 0  # connection count: ids of an earlier connection must never be acknowledged
        client = LeanClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgefleet-hub-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
            on_publish=self._on_publish_fast,
            on_unacked=self._note_unacked if manual_ack else None,
            manual_ack=manual_ack,
        )
        if ssl_context is not None:
            client.tls_set_context(ssl_context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_paho_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self.client = client

    # --- life cycle -----------------------------------------------------------------------------------

    async def start(self) -> BrokerLink:
        """Start the owned connect/reconnect task."""
        self._task = asyncio.create_task(self._run(), name=f"mqtt-link {self.url}")
        return self

    async def aclose(self) -> None:
        """Disconnect cleanly and stop the task."""
        self._closing = True
        if self.client.is_connected():
            self.client.disconnect()
            self.client.loop_write()
        for task in (self._task, self._misc):
            if task is not None:
                task.cancel()
        for task in (self._task, self._misc):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._drop_socket()

    async def __aenter__(self) -> BrokerLink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until connected and subscribed; raise the stop reason if the link gave up."""
        async with asyncio.timeout(timeout_s):
            while not self.connected.is_set():
                if self.failure is not None:
                    raise self.failure
                waiter = asyncio.create_task(self.connected.wait())
                try:
                    await asyncio.wait({waiter, self._task} if self._task else {waiter}, timeout=0.5)
                finally:
                    waiter.cancel()
        if self.failure is not None:
            raise self.failure

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish and, for QoS > 0, wait for the broker's acknowledgement."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise BrokerLinkError(f"publish on {topic} failed: {mqtt.error_string(info.rc)}")
        if qos == 0 or info.is_published():
            return
        await self._await_mid(info.mid, f"PUBACK for {topic}")

    def take_acks(self) -> Callable[[], None]:
        """Take the ids of the messages received so far; the returned function acknowledges them.

        Call it before committing what those messages produced and the result after the commit. Ids from a
        connection that has since been lost are not acknowledged (the broker redelivers those messages)."""
        mids, epoch = self._unacked, self._epoch
        if not mids:
            return _nothing
        self._unacked = []

        def release() -> None:
            if epoch != self._epoch or not self.client.is_connected():
                return
            for mid in mids:
                self.client.ack(mid, 1)

        return release

    def _note_unacked(self, mid: int) -> None:
        self._unacked.append(mid)
        if self.on_pending_ack is not None:
            self.on_pending_ack()

    # --- connect / reconnect ----------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                await self._connect_once()
                attempt = 0
                await self._subscribe_all()
                self.connected.set()
                self._notify(True)
                log.info("connected to broker %s (session present: %s)", self.url, self.session_present)
                assert self._lost is not None
                reason = await self._lost
                log.warning("lost broker %s: %s", self.url, reason)
            except AuthenticationFailed as exc:
                self.failure = exc
                log.error("broker %s refused the hub's identity, not retrying: %s", self.url, exc)
                return
            except (OSError, TimeoutError, BrokerLinkError) as exc:
                log.warning("broker %s: %s", self.url, exc or type(exc).__name__)
            finally:
                if self.connected.is_set():
                    self._notify(False)
                self.connected.clear()
                self._drop_socket()
            attempt += 1
            ceiling = min(self.backoff[1], self.backoff[0] * 2 ** min(attempt, 16))
            await asyncio.sleep(random.uniform(self.backoff[0] / 2, ceiling))  # noqa: S311  # jitter, not crypto

    async def _connect_once(self) -> None:
        self._connack = self._loop.create_future()
        self._lost = self._loop.create_future()
        self._epoch += 1
        self._unacked = []
        self.session_present = None
        props: Properties | None = None
        if self.session_expiry_s is not None or self.receive_maximum is not None:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self.session_expiry_s is not None:
                props.SessionExpiryInterval = self.session_expiry_s
            if self.receive_maximum is not None:
                props.ReceiveMaximum = self.receive_maximum
        clean = self.session_expiry_s is None

        # connect() resolves the name and does the TLS handshake synchronously: keep it off the loop.
        def connect() -> MQTTErrorCode:
            return self.client.connect(
                self.url.host, self.url.port, self.keepalive_s, clean_start=clean, properties=props
            )

        rc = await self._loop.run_in_executor(None, connect)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerLinkError(f"connect failed: {mqtt.error_string(rc)}")
        self._misc = asyncio.create_task(self._misc_loop(), name=f"mqtt-misc {self.url}")
        async with asyncio.timeout(self.timeout_s):
            reason = await self._connack
        if reason.is_failure:
            if reason.value in AUTH_FAILURES:
                raise AuthenticationFailed(f"CONNACK {reason}")
            raise BrokerLinkError(f"CONNACK {reason}")

    async def _subscribe_all(self) -> None:
        if not self.subscriptions:
            return
        rc, mid = self.client.subscribe(list(self.subscriptions))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerLinkError(f"subscribe failed: {mqtt.error_string(rc)}")
        codes: list[ReasonCode] = await self._await_mid(mid, "SUBACK")
        refused = [f"{t}: {c}" for (t, _), c in zip(self.subscriptions, codes, strict=False) if c.is_failure]
        if refused:
            # An ACL refusal will not heal by retrying; say so loudly but keep the subscriptions that worked.
            log.error("broker %s refused subscriptions: %s", self.url, "; ".join(refused))

    async def _await_mid(self, mid: int, what: str) -> Any:
        future = self._futures[mid] = self._loop.create_future()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await future
        except TimeoutError as exc:
            raise BrokerLinkError(f"no {what} (mid {mid}) within {self.timeout_s} s") from exc
        finally:
            self._futures.pop(mid, None)

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.client.socket() is not None:
                self.client.loop_misc()

    def _drop_socket(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        sock = self.client.socket()
        if sock is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _notify(self, up: bool) -> None:
        if self.on_connected is not None:
            self.on_connected(up)

    # --- paho callbacks (run on the loop thread, except socket open/register during connect) -------------

    def _in_loop(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    def _on_connect(self, _c: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Properties | None) -> None:
        self.session_present = bool(getattr(flags, "session_present", False))
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(reason)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(BrokerLinkError(f"disconnected before CONNACK: {reason}"))
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Properties) -> None:
        future = self._futures.get(mid)
        if future is not None and not future.done():
            future.set_result(codes)

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Properties) -> None:
        future = self._futures.get(mid)
        if future is not None and not future.done():
            future.set_result(reason)

    def _on_paho_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self.on_message(message.topic, bytes(message.payload))
        except Exception:
            log.exception("message handler failed on %s", message.topic)
        if self.manual_ack and message.qos == 1:
            self._note_unacked(message.mid)

    def _on_publish_fast(self, topic: str, payload: bytes) -> None:
        try:
            self.on_message(topic, payload)
        except Exception:
            log.exception("message handler failed on %s", topic)

    def _on_socket_open(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(lambda: self._loop.add_reader(sock, self._readable))

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        def forget() -> None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

        self._in_loop(forget)

    def _on_register_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(lambda: self._loop.add_writer(sock, self._writable))

    def _on_unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        def forget() -> None:
            self._loop.remove_writer(sock)

        self._in_loop(forget)

    def _readable(self) -> None:
        # paho reads one packet per loop_read(). Going back to the event loop after each would cost a full
        # loop iteration per message, so keep reading while data is at hand, up to a batch, then let other
        # tasks run. Data at hand: bytes in LeanClient's buffer or, for TLS, decrypted bytes in the SSL
        # object (epoll sees neither), else the socket itself (select, once per buffer refill).
        client = self.client
        client.loop_read()
        for _ in range(READ_BATCH):
            sock = client.socket()
            if sock is None:
                return
            if (
                not client.buffered()
                and not (isinstance(sock, ssl.SSLSocket) and sock.pending())
                and not select.select([sock], [], [], 0)[0]
            ):
                return
            client.loop_read()
        if client.buffered():
            # epoll will not report bytes already in our buffer: come back after other tasks had a turn.
            self._loop.call_soon(self._readable)

    def _writable(self) -> None:
        self.client.loop_write()
