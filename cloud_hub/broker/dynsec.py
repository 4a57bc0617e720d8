"""The broker's authorisation as mosquitto dynamic-security (dynsec) roles: what each identity may
publish, receive and SUBSCRIBE to, and the control-API commands that register or retire a device.

Why dynsec: mosquitto 2.0's `acl_file` grants every SUBSCRIBE (it checks only `read` at delivery), so a
device could join the hub replicas' shared-subscription group and have the broker hand it, and then drop,
a share of every device's telemetry. The dynsec plugin checks SUBSCRIBE against `subscribeLiteral` /
`subscribePattern` ACLs and matches the *whole* filter, `$share/<group>/` included (measured on 2.0.11,
docs/security.md). Two 2.0.11 facts shape the policy: `%u`/`%c` are not substituted in dynsec ACL topics
(each device gets its own role with literal topics), and when `acl_file` is also configured it answers
SUBSCRIBE first and grants it, so the two cannot be combined.

The rules are the same as deploy/mosquitto/acl.template's (a test checks that they agree).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
PLUGIN_PATH = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
HUB_ROLE = "edgefleet-hub"
ADMIN_ROLE = "edgefleet-dynsec-admin"
DEVICE_ROLE_PREFIX = "edgefleet-device-"
# What a device writes under {prefix}/devices/{id}/ and what it receives there (acl.template's pattern lines).
DEVICE_WRITES = ("state", "telemetry", "reported", "events")
DEVICE_READS = ("desired", "telemetry/ack")
# What the hub writes to every device (acl.template's `user edgefleet-hub` block).
HUB_WRITES = ("desired", "telemetry/ack")
# An error the control API answers that means "already as wanted": registering twice, retiring twice.
_IDEMPOTENT = ("already exists", "not found")

Acl = dict[str, Any]


def _acl(kind: str, topic: str, *, allow: bool = True) -> Acl:
    return {"acltype": kind, "topic": topic, "allow": allow}


def device_role(device_id: str) -> str:
    """The dynsec role holding one device's rights."""
    return f"{DEVICE_ROLE_PREFIX}{device_id}"


def device_acls(prefix: str, device_id: str) -> list[Acl]:
    """A device writes its own state/telemetry/reported/events and subscribes to and receives only its own
    desired state and telemetry acks; literal topics, so no wildcard and no `$share/` filter matches."""
    base = f"{prefix}/devices/{device_id}"
    acls = [_acl("publishClientSend", f"{base}/{kind}") for kind in DEVICE_WRITES]
    for kind in DEVICE_READS:
        acls += [_acl("subscribeLiteral", f"{base}/{kind}"), _acl("publishClientReceive", f"{base}/{kind}")]
    return acls


def hub_acls(prefix: str) -> list[Acl]:
    """The hub replicas: subscribe (plainly or in any shared group) to and receive every device topic,
    write every desired state and telemetry ack."""
    devices = f"{prefix}/devices"
    return [
        _acl("subscribePattern", f"{devices}/#"),
        _acl("subscribePattern", f"$share/+/{devices}/#"),
        _acl("publishClientReceive", f"{devices}/#"),
        *(_acl("publishClientSend", f"{devices}/+/{kind}") for kind in HUB_WRITES),
    ]


def admin_acls() -> list[Acl]:
    """The control API (register and retire devices): the hub replicas and a broker admin identity."""
    return [
        _acl("publishClientSend", f"{CONTROL_TOPIC}/#"),
        _acl("publishClientReceive", f"{CONTROL_TOPIC}/#"),
        _acl("subscribePattern", f"{CONTROL_TOPIC}/#"),
    ]


def seed_config(
    prefix: str, hub_usernames: Sequence[str], admin_usernames: Sequence[str] = (), device_ids: Iterable[str] = ()
) -> dict[str, Any]:
    """The plugin's first config file: the hub role, the hub replicas, optional admins and devices.

    Everything not granted is denied (`defaultACLAccess` false), except unsubscribing."""
    devices = list(dict.fromkeys(device_ids))
    # Roles straight on the clients: a group's roles did not apply to its clients from a seed file on 2.0.11.
    clients = [{"username": name, "roles": [{"rolename": HUB_ROLE}]} for name in dict.fromkeys(hub_usernames)]
    clients += [{"username": name, "roles": [{"rolename": ADMIN_ROLE}]} for name in dict.fromkeys(admin_usernames)]
    clients += [{"username": d, "roles": [{"rolename": device_role(d)}]} for d in devices]
    roles = [
        {"rolename": HUB_ROLE, "acls": hub_acls(prefix) + admin_acls()},
        {"rolename": ADMIN_ROLE, "acls": admin_acls()},
        *({"rolename": device_role(d), "acls": device_acls(prefix, d)} for d in devices),
    ]
    return {
        "clients": clients,
        "groups": [],
        "roles": roles,
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
    }


def register_commands(prefix: str, device_id: str) -> list[dict[str, Any]]:
    """Control-API commands that give `device_id` its rights (idempotent: "already exists" is fine)."""
    role = device_role(device_id)
    return [
        {"command": "createRole", "rolename": role, "acls": device_acls(prefix, device_id)},
        {"command": "createClient", "username": device_id, "roles": [{"rolename": role}]},
    ]


def retire_commands(device_id: str) -> list[dict[str, Any]]:
    """Commands that take every right from `device_id`; deleting the client also disconnects it at once."""
    return [
        {"command": "deleteClient", "username": device_id},
        {"command": "deleteRole", "rolename": device_role(device_id)},
    ]


def encode(commands: Sequence[dict[str, Any]], correlation: str) -> bytes:
    """The control message for `commands`, each tagged with `correlation` (echoed in the response)."""
    return json.dumps({"commands": [{**c, "correlationData": correlation} for c in commands]}).encode()


def failures(response: bytes, correlation: str) -> list[str] | None:
    """Errors of the response to `correlation` (idempotent ones dropped); None if it answers another."""
    try:
        answers = json.loads(response)["responses"]
    except (ValueError, KeyError, TypeError):
        return None
    mine = [a for a in answers if isinstance(a, dict) and a.get("correlationData") == correlation]
    if not mine:
        return None
    errors = [f"{a.get('command')}: {a['error']}" for a in mine if a.get("error")]
    return [e for e in errors if not any(ok in e.lower() for ok in _IDEMPOTENT)]
