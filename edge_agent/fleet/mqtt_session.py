"""One MQTT connection: a fresh paho client driven by the asyncio loop (no paho thread).

paho runs in "external loop" mode: the socket is registered with `loop.add_reader/add_writer` and
`loop_misc` runs once a second for keep-alive, as Home Assistant's MQTT client does. Everything then
happens on the event-loop thread, so acknowledgement Futures need no locking and callbacks cannot race
the code awaiting them. Only the blocking TCP + TLS connect runs in an executor; the socket callbacks it
triggers are marshalled back with `call_soon_threadsafe`.

A session is used once: reconnecting makes a new one. paho would otherwise re-send its unacknowledged
QoS 1 messages on reconnect while our spool re-sends them too, which duplicates reports.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.fleet.errors import AuthenticationFailed, LinkDown, PublishFailed

log = logging.getLogger(__name__)

# CONNACK reason codes that retrying cannot fix: bad user name or password, not authorized, banned,
# bad authentication method (MQTT 5, 3.2.2.2).
AUTH_REASON_CODES = frozenset({134, 135, 138, 140})
# TLS alerts a broker sends when it rejects the client certificate, and local verification failures.
_TLS_AUTH_MARKERS = (
    "UNKNOWN_CA",
    "BAD_CERTIFICATE",
    "CERTIFICATE_REVOKED",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_UNKNOWN",
    "CERTIFICATE_REQUIRED",
    "ACCESS_DENIED",
    "HANDSHAKE_FAILURE",
    "CERTIFICATE_VERIFY_FAILED",
)
_MAX_READS_PER_EVENT = 1000
_MISC_PERIOD_S = 1.0


def is_auth_failure(exc: BaseException | str) -> bool:
    """True if a connect error means the broker rejected our identity (or we rejected the broker's)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    text = exc if isinstance(exc, str) else f"{getattr(exc, 'reason', '')} {exc}"
    return any(marker in text.upper() for marker in _TLS_AUTH_MARKERS)


class MqttSession:
    """A single connection attempt and, if it succeeds, the connection until it drops."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_id: str,
        ssl_context: ssl.SSLContext | None,
        on_message: Callable[[mqtt.MQTTMessage], None],
    ) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._on_message = on_message
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        if ssl_context is not None:
            self.client.tls_set_context(ssl_context)
        self.connack: asyncio.Future[None] = loop.create_future()
        self.closed = asyncio.Event()
        self.close_reason = "not connected"
        self.last_error: str | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._fd = -1
        self._writing = False
        self._misc: asyncio.Task[None] | None = None
        self._abandoned = False
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_paho_message
        c.on_log = self._on_log
        c.on_socket_open = self._threadsafe(self._socket_open)
        c.on_socket_close = self._threadsafe(self._socket_close)
        c.on_socket_register_write = self._threadsafe(self._register_write)
        c.on_socket_unregister_write = self._threadsafe(self._unregister_write)

    # --- life cycle -------------------------------------------------------------------------------

    async def connect(self, host: str, port: int, keepalive_s: int, timeout_s: float) -> None:
        """Open TCP + TLS, send CONNECT and wait for a successful CONNACK."""
        self.client.connect_timeout = timeout_s
        try:
            await asyncio.wait_for(
                self._loop.run_in_executor(
                    None, lambda: self.client.connect(host, port, keepalive_s, clean_start=True)
                ),
                timeout_s + 5.0,
            )
            await asyncio.wait_for(asyncio.shield(self.connack), timeout_s)
        except ssl.SSLError as exc:
            if is_auth_failure(exc):
                raise AuthenticationFailed(f"TLS handshake refused: {exc}") from exc
            raise LinkDown(f"TLS handshake failed: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            if self.last_error and is_auth_failure(self.last_error):
                raise AuthenticationFailed(f"broker refused the connection: {self.last_error}") from exc
            raise LinkDown(f"cannot connect to {host}:{port}: {exc or type(exc).__name__}") from exc
        except LinkDown:
            if self.last_error and is_auth_failure(self.last_error):
                raise AuthenticationFailed(f"broker refused the connection: {self.last_error}") from None
            raise

    def disconnect(self) -> None:
        """Send DISCONNECT (no will); `closed` is set once it is written and the socket is closed."""
        self.client.disconnect()

    def abandon(self) -> None:
        """Drop the connection now, without DISCONNECT (the broker fires the will if it was connected)."""
        self._abandoned = True
        sock = self.client.socket()
        self._socket_close(self.client, None, sock)
        if sock is not None:
            sock.close()
        self._finish("abandoned")

    # --- requests ---------------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool, timeout_s: float) -> None:
        """Publish; for QoS 1 wait for a successful PUBACK."""
        if self.closed.is_set():
            raise LinkDown(f"not connected ({self.close_reason})")
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkDown(f"publish on {topic} failed: {mqtt.error_string(info.rc)}")
        if qos > 0:
            reason: ReasonCode = await self._wait(info.mid, timeout_s, f"PUBACK for {topic}")
            if reason.is_failure:
                raise PublishFailed(f"broker refused publish on {topic}: {reason}")

    async def subscribe(self, topic: str, qos: int, timeout_s: float) -> ReasonCode:
        """Subscribe and return the SUBACK reason code (may be a failure such as Not authorized)."""
        rc, mid = self.client.subscribe(topic, options=SubscribeOptions(qos=qos))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise LinkDown(f"subscribe to {topic} failed: {mqtt.error_string(rc)}")
        codes: list[ReasonCode] = await self._wait(mid, timeout_s, f"SUBACK for {topic}")
        return codes[0]

    async def _wait(self, mid: int, timeout_s: float, what: str) -> Any:
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[mid] = fut
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError as exc:
            raise PublishFailed(f"no {what} within {timeout_s} s") from exc
        finally:
            if self._pending.get(mid) is fut:
                del self._pending[mid]

    # --- paho callbacks (event-loop thread) --------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        if self.connack.done():
            return
        if not reason.is_failure:
            self.connack.set_result(None)
        elif reason.value in AUTH_REASON_CODES:
            self.connack.set_exception(AuthenticationFailed(f"broker refused the device: {reason}"))
        else:
            self.connack.set_exception(LinkDown(f"broker refused the connection: {reason}"))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        self._finish(str(reason))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        fut = self._pending.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        fut = self._pending.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(reasons)

    def _on_paho_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._on_message(message)

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self.last_error = text
            log.debug("paho: %s", text)

    # --- socket integration ------------------------------------------------------------------------

    def _threadsafe(self, fn: Callable[[mqtt.Client, Any, Any], None]) -> Callable[[mqtt.Client, Any, Any], None]:
        def call(client: mqtt.Client, userdata: Any, sock: Any) -> None:
            if threading.get_ident() == self._loop_thread:
                fn(client, userdata, sock)
            else:
                self._loop.call_soon_threadsafe(fn, client, userdata, sock)

        return call

    def _socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._abandoned or self.closed.is_set():
            # The connect finished after we gave up on it: do not adopt the socket.
            sock.close()
            return
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._readable)
        self._misc = self._loop.create_task(self._misc_loop(), name="mqtt-misc")

    def _socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = -1
            self._writing = False

    def _register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._fd >= 0 and not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._writable)

    def _unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._fd >= 0 and self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        for _ in range(_MAX_READS_PER_EVENT):
            if self.client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            sock = self.client.socket()
            # Decrypted bytes left inside the TLS object do not make the fd readable again.
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0):
                break
        self._check_dead()

    def _writable(self) -> None:
        self.client.loop_write()
        self._check_dead()

    def _check_dead(self) -> None:
        if self.client.socket() is None and not self.closed.is_set():
            self._finish(self.last_error or "connection closed")

    async def _misc_loop(self) -> None:
        while not self.closed.is_set():
            await asyncio.sleep(_MISC_PERIOD_S)
            if self.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._check_dead()
                return

    def _finish(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        if not self.connack.done():
            self.connack.set_exception(LinkDown(f"connection closed before CONNACK: {reason}"))
            self.connack.exception()  # retrieved: nobody may be awaiting it any more
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(LinkDown(f"connection lost: {reason}"))
        if self._misc is not None and self._misc is not asyncio.current_task():
            self._misc.cancel()
