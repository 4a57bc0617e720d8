"""The agent's MQTT v5 link to the hub: mTLS identity, birth and will, desired-state dispatch, reconnects.

On every connect: subscribe to our own `desired`, then publish the retained birth on `state` (so a hub
that sees the birth knows the device already listens). The will is a retained DeviceOffline(lost); a
clean `aclose` publishes DeviceOffline(shutdown) and disconnects. Lost connections are retried with
jittered exponential backoff; an authentication failure (CONNACK 134/135/138/140, or a TLS handshake the
broker refuses for our certificate) stops the link in state `auth_failed`, because retrying a rejected
identity only hammers the broker. Serving never waits on this link: nothing on the request path calls it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

import paho.mqtt.client as mqtt
from pydantic import BaseModel, ValidationError

from edge_agent.fleet.errors import AuthenticationFailed, FleetError, LinkDown, PublishFailed
from edge_agent.fleet.identity import DeviceIdentity
from edge_agent.fleet.mqtt_session import MqttSession
from protocols.messages import DesiredState, DeviceBirth, DeviceOffline
from protocols.topics import DEFAULT_PREFIX, Topics

log = logging.getLogger(__name__)

LinkState = Literal["idle", "connecting", "connected", "backoff", "auth_failed", "closed"]
DesiredCallback = Callable[[DesiredState], Awaitable[None]]
ConnectCallback = Callable[[], Awaitable[None]]
TopicHandler = Callable[[bytes], None]
Payload = bytes | str | BaseModel
_DESIRED_QUEUE = 64


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Where and as whom the link connects, and its timing."""

    device_id: str
    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    topic_prefix: str = DEFAULT_PREFIX
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0

    @classmethod
    def from_identity(
        cls,
        identity: DeviceIdentity,
        *,
        broker_url: str | None = None,
        topic_prefix: str | None = None,
        keepalive_s: int = 30,
    ) -> LinkSettings:
        """Settings from a provisioned identity, with optional broker URL and prefix overrides."""
        broker = identity.broker if broker_url is None else type(identity.broker).parse(broker_url)
        return cls(
            device_id=identity.device_id,
            host=broker.host,
            port=broker.port,
            ssl_context=identity.ssl_context() if broker.tls else None,
            topic_prefix=topic_prefix or identity.topic_prefix,
            keepalive_s=keepalive_s,
        )


def _encode(payload: Payload) -> bytes:
    if isinstance(payload, BaseModel):
        return payload.model_dump_json().encode()
    return payload.encode() if isinstance(payload, str) else payload


class DeviceLink:
    """Async context manager owning the connection supervisor and the desired-state dispatcher."""

    def __init__(
        self, settings: LinkSettings, birth: Callable[[], DeviceBirth], *, rng: random.Random | None = None
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self._birth = birth
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._state: LinkState = "idle"
        self._session: MqttSession | None = None
        self._connected = asyncio.Event()
        self._desired: asyncio.Queue[DesiredState] = asyncio.Queue(_DESIRED_QUEUE)
        self._desired_callbacks: list[DesiredCallback] = []
        self._connect_callbacks: list[ConnectCallback] = []
        self._handlers: dict[str, TopicHandler] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._listener_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.connect_attempts = 0
        self.connections = 0
        self.received_desired = 0
        self.cleared_desired = 0
        self.malformed_desired = 0
        self.dropped_desired = 0
        self.callback_errors = 0
        self.last_error: str | None = None

    # --- public API ------------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        """idle, connecting, connected, backoff, auth_failed (stopped for good) or closed."""
        return self._state

    @property
    def connected(self) -> bool:
        """True between a completed birth and the loss of the connection."""
        return self._state == "connected"

    def on_desired(self, callback: DesiredCallback) -> None:
        """Register an async callback for each valid DesiredState received (retained ones included)."""
        self._desired_callbacks.append(callback)

    def on_connected(self, callback: ConnectCallback) -> None:
        """Register an async callback run (as an owned task) after each connect + birth."""
        self._connect_callbacks.append(callback)

    def subscribe(self, topic: str, handler: TopicHandler) -> None:
        """Subscribe to `topic` (QoS 1) on every connect, before the birth; `handler(payload)` runs per message."""
        self._handlers[topic] = handler

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Wait until the link is connected; raises TimeoutError, or AuthenticationFailed if it gave up."""
        async with asyncio.timeout(timeout_s):
            while not self.connected:
                if self._state == "auth_failed":
                    raise AuthenticationFailed(self.last_error or "authentication failed")
                waiter = asyncio.ensure_future(self._connected.wait())
                try:
                    await asyncio.wait({waiter}, timeout=0.5)
                finally:
                    waiter.cancel()

    async def publish(
        self,
        topic: str,
        payload: Payload,
        *,
        qos: Literal[0, 1] = 0,
        retain: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        """Publish now; QoS 1 waits for PUBACK. Raises LinkDown when not connected, PublishFailed on refusal."""
        session = self._session
        if session is None or not self.connected:
            raise LinkDown(f"MQTT link is {self._state}")
        await session.publish(topic, _encode(payload), qos, retain, timeout_s or self.settings.ack_timeout_s)

    def publish_nowait(
        self, topic: str, payload: Payload, *, qos: Literal[0, 1] = 1, retain: bool = False
    ) -> asyncio.Task[None]:
        """Start a publish and return a task that ends with its PUBACK (tasks start in call order)."""
        session = self._session
        if session is None or not self.connected:
            raise LinkDown(f"MQTT link is {self._state}")
        return asyncio.create_task(
            session.publish(topic, _encode(payload), qos, retain, self.settings.ack_timeout_s), name="mqtt-publish"
        )

    def start(self) -> None:
        """Start connecting in the background (idempotent)."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._supervise(), name="mqtt-link"),
            asyncio.create_task(self._dispatch(), name="mqtt-desired"),
        ]

    async def aclose(self) -> None:
        """Publish DeviceOffline(shutdown) if connected, disconnect cleanly and stop every task."""
        if self._closing:
            return
        self._closing = True
        session = self._session
        if session is not None and self.connected:
            offline = DeviceOffline(device_id=self.settings.device_id, reason="shutdown")
            try:
                await session.publish(self.topics.state(self.settings.device_id), _encode(offline), 1, True, 2.0)
                session.disconnect()
                await asyncio.wait_for(session.closed.wait(), 2.0)
            except (FleetError, TimeoutError) as exc:
                log.warning("clean MQTT shutdown incomplete: %s", exc)
        if session is not None and not session.closed.is_set():
            session.abandon()
        for task in [*self._tasks, *self._listener_tasks]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._listener_tasks, return_exceptions=True)
        self._tasks.clear()
        self._set_state("closed")

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- connection supervisor ---------------------------------------------------------------------

    async def _supervise(self) -> None:
        failures = 0
        while not self._closing:
            self.connect_attempts += 1
            self._set_state("connecting")
            session = MqttSession(
                asyncio.get_running_loop(), self.settings.device_id, self.settings.ssl_context, self._on_message
            )
            try:
                await self._establish(session)
            except AuthenticationFailed as exc:
                session.abandon()
                self.last_error = str(exc)
                self._set_state("auth_failed")
                log.error("MQTT authentication failed, not retrying until restart: %s", exc)
                return
            except (FleetError, OSError, TimeoutError) as exc:
                session.abandon()
                self.last_error = str(exc)
                failures += 1
            else:
                failures = 0
                await session.closed.wait()
                self._connected.clear()
                self._session = None
                if self._closing:
                    return
                self.last_error = session.close_reason
                log.warning("MQTT connection lost: %s", session.close_reason)
                failures = 1
            delay = self._backoff(failures)
            self._set_state("backoff")
            log.warning(
                "MQTT connect to %s:%s failed (%s); retry in %.1f s",
                self.settings.host,
                self.settings.port,
                self.last_error,
                delay,
            )
            await asyncio.sleep(delay)

    def _backoff(self, failures: int) -> float:
        # "Equal jitter": half the exponential step is fixed, half random, so a fleet that lost the
        # broker together does not come back in lock-step, yet no device retries in a tight loop.
        step = min(self.settings.backoff_max_s, self.settings.backoff_initial_s * 2 ** (failures - 1))
        return float(step / 2 + self._rng.uniform(0, step / 2))

    async def _establish(self, session: MqttSession) -> None:
        s = self.settings
        state_topic = self.topics.state(s.device_id)
        will = DeviceOffline(device_id=s.device_id, reason="lost")
        session.client.will_set(state_topic, _encode(will), qos=1, retain=True)
        await session.connect(s.host, s.port, s.keepalive_s, s.connect_timeout_s)
        self._session = session
        desired = self.topics.desired(s.device_id)
        reason = await session.subscribe(desired, 1, s.ack_timeout_s)
        if reason.is_failure:
            log.error("subscription to %s refused by the broker: %s", desired, reason)
        for topic in self._handlers:
            reason = await session.subscribe(topic, 1, s.ack_timeout_s)
            if reason.is_failure:
                log.error("subscription to %s refused by the broker: %s", topic, reason)
        await session.publish(state_topic, _encode(self._birth()), 1, True, s.ack_timeout_s)
        self.connections += 1
        self._set_state("connected")
        self._connected.set()
        log.info("MQTT link up to %s:%s as %s", s.host, s.port, s.device_id)
        for callback in self._connect_callbacks:
            task = asyncio.create_task(self._guarded(callback), name="mqtt-on-connected")
            self._listener_tasks.add(task)
            task.add_done_callback(self._listener_tasks.discard)

    async def _guarded(self, callback: ConnectCallback) -> None:
        try:
            await callback()
        except Exception:
            self.callback_errors += 1
            log.exception("on-connected callback %r failed", callback)

    def _set_state(self, state: LinkState) -> None:
        if state != self._state:
            log.debug("MQTT link %s -> %s", self._state, state)
            self._state = state

    # --- desired state ------------------------------------------------------------------------------

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        handler = self._handlers.get(message.topic)
        if handler is not None:
            try:
                handler(bytes(message.payload))
            except Exception:
                self.callback_errors += 1
                log.exception("handler of %s failed", message.topic)
            return
        if not message.payload:
            self.cleared_desired += 1
            log.info("retained desired state on %s was cleared", message.topic)
            return
        try:
            desired = DesiredState.model_validate_json(message.payload)
            if desired.device_id != self.settings.device_id:
                raise ValueError(f"desired state for {desired.device_id!r}, not for this device")
        except (ValidationError, ValueError) as exc:
            self.malformed_desired += 1
            log.warning("malformed desired state on %s dropped: %s", message.topic, str(exc)[:500])
            return
        self.received_desired += 1
        try:
            self._desired.put_nowait(desired)
        except asyncio.QueueFull:
            self.dropped_desired += 1
            log.error("desired-state queue full: revision %s dropped", desired.revision)

    async def _dispatch(self) -> None:
        while True:
            desired = await self._desired.get()
            for callback in list(self._desired_callbacks):
                try:
                    await callback(desired)
                except Exception:
                    self.callback_errors += 1
                    log.exception("desired-state callback %r failed on revision %s", callback, desired.revision)


__all__ = ["DeviceLink", "LinkDown", "LinkSettings", "LinkState", "PublishFailed"]
