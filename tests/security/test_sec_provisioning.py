"""Provisioning cannot mint the hub's own identity: the broker's ACL gives CN edgefleet-hub every desired topic."""

from __future__ import annotations

import pytest
from devices_support import provision
from sec_support import HubApi

from cloud_hub.app import Hub
from cloud_hub.pki.identity import HUB_CN


@pytest.mark.parametrize("device_id", [HUB_CN, "edgefleet-broker", "edgefleet-hub-https", "EdgeFleet-Hub"])
async def test_claims_cannot_provision_reserved_identities(hub: Hub, api: HubApi, device_id: str) -> None:
    status, created = await api.call("POST", "/api/v1/claims", {"uses": 1})
    assert status == 201
    status, body, _ = await provision(api.url, api.cafile, created["token"], device_id=device_id)
    assert status == 403 and "reserved" in body["error"], body
    # Nothing was issued and the claim's use is still there.
    status, listing = await api.call("GET", "/api/v1/devices")
    assert listing["devices"] == []
    status, body, _ = await provision(api.url, api.cafile, created["token"], device_id="dev-ok")
    assert status == 200, body
