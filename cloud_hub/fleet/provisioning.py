"""Provisioning by claim: check the CSR, take one use of the claim, assign the id, sign the certificate.

Device id rule: a requested id that is free is granted; a requested id that exists may be re-provisioned
(a new certificate for a new key) only with a token of the same claim that first provisioned it (else
409), never once revoked, and only with proof of its current key (its certificate in the TLS handshake)
or a one-time operator approval (else 403); the replaced certificate goes on the CRL. Without a requested
id the hub picks `dev-<hex>`.
The claim use, the id and the certificate serial are written in one transaction, so a failure (or a
race on the same id) gives the use back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from sqlalchemy.exc import IntegrityError

from cloud_hub.broker.registrar import BrokerRights
from cloud_hub.errors import Conflict, Forbidden, HubError
from cloud_hub.fleet.live import LiveFleet
from cloud_hub.fleet.tokens import new_id, token_hash
from cloud_hub.pki import HubIdentity, load_csr
from cloud_hub.pki.ca import cert_fingerprint
from cloud_hub.store import Store, claims, devices
from protocols.messages import ProvisionRequest, ProvisionResponse

log = logging.getLogger(__name__)

# Certificate CNs of the hub and its broker (edgefleet-hub has the hub's ACL rights); never a device's.
RESERVED_ID_PREFIX = "edgefleet-"


@dataclass(frozen=True)
class PresentedCert:
    """The client certificate (hub CA, verified in the TLS handshake) a provisioning request came with."""

    common_name: str
    serial: int


@dataclass(frozen=True)
class ProvisionSettings:
    """What the hub tells every new device."""

    hub_url: str
    broker_url: str
    topic_prefix: str
    telemetry_interval_s: float


class Provisioner:
    """Turns a ProvisionRequest into a registered device and its ProvisionResponse."""

    def __init__(self, store: Store, identity: HubIdentity, fleet: LiveFleet, settings: ProvisionSettings) -> None:
        self.store = store
        self.identity = identity
        self.fleet = fleet
        self.settings = settings
        self.registrar: BrokerRights | None = None  # the device's broker rights (dynsec; acl: nothing to do)
        self.write_crl: Callable[[], Awaitable[int]] | None = None  # DeviceService.write_crl

    async def provision(self, request: ProvisionRequest, proof: PresentedCert | None = None) -> ProvisionResponse:
        """Register (or re-provision) the device; raise Unauthorized/Forbidden/Conflict/InvalidRequest.

        An existing id is re-provisioned only with `proof` (its current certificate presented in the TLS
        handshake: proof of the current key) or an operator approval (`devices approve-reprovision`); the
        certificate it replaces is retired onto the CRL."""
        if request.device_id is not None and request.device_id.lower().startswith(RESERVED_ID_PREFIX):
            # The broker's ACL gives the CN edgefleet-hub the hub's rights (every desired topic): never to a device.
            raise Forbidden(f"device id {request.device_id!r} is reserved ({RESERVED_ID_PREFIX}* names the hub's own)")
        public_key = load_csr(request.csr_pem)
        now = time.time()
        try:
            async with self.store.begin() as conn:
                claim = await claims.consume(conn, token_hash(request.claim_token), now)
                device_id = request.device_id
                existing = await devices.get(conn, device_id) if device_id else None
                if existing is not None:
                    if existing.status != devices.ACTIVE:
                        raise Forbidden(f"device {device_id!r} is revoked; provision it under a new id")
                    if existing.claim_id != claim.id:
                        raise Conflict(f"device id {device_id!r} belongs to another claim")
                    proven = proof is not None and proof.common_name == device_id
                    proven = proven and proof is not None and proof.serial == int(existing.cert_serial or "0", 16)
                    if not proven and not await devices.take_approval(conn, existing.id, now):
                        raise Forbidden(
                            f"device {device_id!r} exists: re-provisioning it needs its current certificate "
                            "(proof of its key) or an operator approval (cloud-hub devices approve-reprovision)"
                        )
                    if existing.cert_serial:
                        await devices.retire_cert(conn, existing.id, existing.cert_serial, now)
                device_id = device_id or new_id("dev")
                cert = self.identity.ca.issue(public_key, device_id, client=True)
                values = {
                    "labels": claim.labels,
                    "hardware": request.hardware.model_dump(mode="json"),
                    "claim_id": claim.id,
                    "cert_serial": format(cert.serial_number, "x"),
                    "cert_fingerprint": cert_fingerprint(cert),
                    "cert_not_after": cert.not_valid_after_utc.timestamp(),
                    "provisioned_at": now,
                }
                if existing is None:
                    await devices.insert_new(
                        conn,
                        {**values, "id": device_id, "status": devices.ACTIVE, "online": False, "created_at": now},
                    )
                else:
                    await devices.reprovision(conn, device_id, values)
        except IntegrityError as exc:
            raise Conflict(f"device id {request.device_id!r} was just taken; retry") from exc
        self.fleet.set_status(device_id, devices.ACTIVE)
        if existing is not None and self.write_crl is not None:
            await self.write_crl()  # the replaced certificate is refused from the next broker (re)load
        if self.registrar is not None:
            try:
                await self.registrar.register(device_id)
            except HubError as exc:  # the next sync (every broker reconnect) registers it
                log.warning("device %s provisioned; broker registration waits for the next sync: %s", device_id, exc)
        return ProvisionResponse(
            device_id=device_id,
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            ca_chain_pem=self.identity.ca.cert_pem().decode("ascii"),
            broker_url=self.settings.broker_url,
            hub_url=self.settings.hub_url,
            topic_prefix=self.settings.topic_prefix,
            signing_keys=self.identity.signing_keys(),
            labels=claim.labels,
            telemetry_interval_s=self.settings.telemetry_interval_s,
        )
