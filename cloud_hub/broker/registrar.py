"""The hub keeps the broker's dynamic-security registry in step with its device registry.

With `broker_authz = "dynsec"` a device's certificate alone gets it nothing on the broker: every right
comes from its dynsec role (cloud_hub/broker/dynsec.py). The hub registers a device when it is
provisioned, retires it when it is revoked (deleting the dynsec client also disconnects it at once,
measured on 2.0.11), and on every (re)connect to a broker applies the whole registry again, so a device
provisioned or revoked while a broker was away is put right when it comes back. Commands go to
`$CONTROL/dynamic-security/v1` on every linked broker; the answers (`.../response`, matched by
correlation data) are awaited, and an error other than "already exists"/"not found" raises.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from cloud_hub.broker import dynsec
from cloud_hub.errors import HubError

if TYPE_CHECKING:
    from cloud_hub.broker.link import BrokerLink

log = logging.getLogger(__name__)

BATCH = 200  # commands per control message (a sync of a large fleet goes out in slices)


class BrokerRights(Protocol):
    """The hub's hand on what the brokers let a device do: `DynsecRegistrar` (dynsec), `SessionKicker` (acl)."""

    keeps_registry: bool  # True: the brokers hold a registry that `sync` must put in step at every connect

    async def register(self, device_id: str) -> None:
        """Give a provisioned device its rights on every broker."""
        ...

    async def retire(self, device_id: str) -> None:
        """Take a revoked device's rights and disconnect it from every broker."""
        ...

    async def sync(self, active: Iterable[str], revoked: Iterable[str]) -> None:
        """Put the brokers in step with the whole registry."""
        ...

    def revoked_seen(self, device_id: str) -> None:
        """A revoked device's message reached ingest."""
        ...

    async def aclose(self) -> None:
        """Stop what is pending."""
        ...


class DynsecRegistrar:
    """Sends control commands on the hub's broker links and waits for each broker's answer."""

    keeps_registry = True

    def __init__(self, links: Callable[[], Sequence[BrokerLink]], prefix: str, timeout_s: float = 10.0) -> None:
        self._links = links
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._pending: dict[str, tuple[asyncio.Future[list[str]], list[list[str]], int]] = {}

    def handles(self, topic: str, payload: bytes) -> bool:
        """Take a control-API answer off the message stream (True), or leave it to ingest (False)."""
        if topic != dynsec.RESPONSE_TOPIC:
            return False
        for correlation, (future, answers, expected) in list(self._pending.items()):
            errors = dynsec.failures(payload, correlation)
            if errors is None:
                continue
            answers.append(errors)
            if len(answers) >= expected and not future.done():
                future.set_result([e for a in answers for e in a])
        return True

    async def apply(self, commands: Sequence[dict[str, Any]]) -> None:
        """Run `commands` on every linked broker; raise HubError when one is down, silent or refuses."""
        links = [link for link in self._links() if link.connected.is_set()]
        if not links or len(links) != len(self._links()):
            raise HubError("a broker is not connected: its dynamic-security registry is put right on reconnect")
        for start in range(0, len(commands), BATCH):
            await self._apply_slice(links, commands[start : start + BATCH])

    async def _apply_slice(self, links: Sequence[BrokerLink], commands: Sequence[dict[str, Any]]) -> None:
        correlation = uuid.uuid4().hex
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = (future, [], len(links))
        try:
            payload = dynsec.encode(commands, correlation)
            await asyncio.gather(*(link.publish(dynsec.CONTROL_TOPIC, payload, qos=1) for link in links))
            errors = await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError as exc:
            raise HubError("the broker did not answer the dynamic-security command (is the plugin loaded?)") from exc
        finally:
            self._pending.pop(correlation, None)
        if errors:
            raise HubError(f"the broker refused: {'; '.join(errors)}")

    async def register(self, device_id: str) -> None:
        """Give a provisioned device its rights on every broker."""
        await self.apply(dynsec.register_commands(self.prefix, device_id))

    async def retire(self, device_id: str) -> None:
        """Take every right from a revoked device (and disconnect it) on every broker."""
        await self.apply(dynsec.retire_commands(device_id))

    async def sync(self, active: Iterable[str], revoked: Iterable[str]) -> None:
        """Apply the whole registry: every active device registered, every revoked one retired."""
        commands = [c for d in active for c in dynsec.register_commands(self.prefix, d)]
        commands += [c for d in revoked for c in dynsec.retire_commands(d)]
        if commands:
            await self.apply(commands)

    def revoked_seen(self, device_id: str) -> None:
        """Nothing to do: a retired device has no rights left (it cannot even publish)."""

    async def aclose(self) -> None:
        """Nothing pending outlives a call."""
