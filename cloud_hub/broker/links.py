"""The hub's links to its brokers, one per configured broker: ingest subscribes through them and the
desired-state writer publishes on them, so desired state goes out whether or not this hub ingests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from prometheus_client import Gauge

from cloud_hub.broker import dynsec
from cloud_hub.broker.kick import SessionKicker
from cloud_hub.broker.link import BrokerLink, MessageHandler
from cloud_hub.broker.registrar import BrokerRights, DynsecRegistrar
from cloud_hub.broker.url import BrokerUrl
from cloud_hub.config import HubConfig
from cloud_hub.errors import HubError
from cloud_hub.metrics import HubMetrics
from cloud_hub.pki import HubIdentity
from cloud_hub.pki.identity import replica_cn

log = logging.getLogger(__name__)


def _ignore(_topic: str, _payload: bytes) -> None:
    pass


class BrokerLinks:
    """Opens one `BrokerLink` per `config.brokers` entry (`start`), publishes desired state on all of them."""

    def __init__(self, config: HubConfig, identity: HubIdentity, metrics: HubMetrics) -> None:
        self.config = config
        self.identity = identity
        self.metrics = metrics
        self.links: list[BrokerLink] = []
        # broker_authz = "dynsec": the hub keeps the brokers' dynamic-security registry (registrar.py);
        # "acl": the brokers grant by CN, and the hub cuts revoked devices off by client-id takeover (kick.py).
        self.registrar: BrokerRights | None = None
        if not config.brokers:
            pass  # no broker: nothing to keep in step
        elif config.broker_authz == "dynsec":
            self.registrar = DynsecRegistrar(lambda: self.links, config.topic_prefix)
        else:
            cafile = config.broker_cafile or identity.paths.ca_cert
            self.registrar = SessionKicker(config.brokers, identity.ca, cafile, identity.paths.pki)
        self.on_link_up: Callable[[], None] | None = None  # called after each (re)connect of a link

    async def start(
        self,
        *,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: MessageHandler = _ignore,
        client_id: str | None = None,
        session_expiry_s: int | None = None,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        on_pending_ack: Callable[[], None] | None = None,
    ) -> list[BrokerLink]:
        """Start a link to every configured broker (ingest passes its subscriptions and session settings)."""
        registrar = self.registrar
        if isinstance(registrar, DynsecRegistrar):
            subscriptions = (*subscriptions, (dynsec.RESPONSE_TOPIC, 0))
            ingest = on_message

            def on_message(topic: str, payload: bytes) -> None:
                if not registrar.handles(topic, payload):
                    ingest(topic, payload)

        for url in self.config.brokers:
            broker = BrokerUrl.parse(url)
            cn = replica_cn(self.config.data_dir, self.config.mqtt_identity, client_id)
            ctx = self.identity.mqtt_ssl_context(self.config.broker_cafile, cn) if broker.tls else None
            gauge = self.metrics.broker_connected.labels(broker=str(broker))

            def connected(up: bool, gauge: Gauge = gauge) -> None:
                gauge.set(1 if up else 0)
                if up and self.on_link_up is not None:
                    self.on_link_up()

            link = BrokerLink(
                broker,
                subscriptions=subscriptions,
                on_message=on_message,
                ssl_context=ctx,
                keepalive_s=self.config.mqtt_keepalive_s,
                on_connected=connected,
                client_id=client_id,
                session_expiry_s=session_expiry_s,
                manual_ack=manual_ack,
                receive_maximum=receive_maximum,
                on_pending_ack=on_pending_ack,
            )
            self.links.append(await link.start())
        return self.links

    async def wait_connected(self, timeout_s: float = 10.0) -> None:
        """Wait until every broker link is connected (and subscribed)."""
        for link in self.links:
            await link.wait_connected(timeout_s)

    async def publish_retained(self, topic: str, payload: bytes) -> None:
        """Publish a desired state retained, QoS 1, on every broker the hub is linked to."""
        if not self.links:
            raise HubError("no broker link to publish desired state on")
        down = [str(link.url) for link in self.links if not link.connected.is_set()]
        if down:
            raise HubError(f"broker {down[0]} is not connected")
        await asyncio.gather(*(link.publish(topic, payload, qos=1, retain=True) for link in self.links))

    async def aclose(self) -> None:
        """Close every link (idempotent)."""
        if self.registrar is not None:
            await self.registrar.aclose()
        links, self.links = self.links, []
        for link in links:
            await link.aclose()
