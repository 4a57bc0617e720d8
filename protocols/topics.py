"""MQTT topic builders and parsers: `{prefix}/devices/{id}/{kind}`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal, get_args

from protocols.common import ProtocolError

DEFAULT_PREFIX: Final = "edgefleet/v1"
TopicKind = Literal["state", "telemetry", "desired", "reported", "events"]
TOPIC_KINDS: Final[tuple[str, ...]] = get_args(TopicKind)
# Kinds a device publishes; `desired` is the only hub -> device topic.
DEVICE_PUBLISHES: Final[tuple[str, ...]] = ("state", "telemetry", "reported", "events")

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_GROUP = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """A device topic split into its parts."""

    device_id: str
    kind: TopicKind


@dataclass(frozen=True, slots=True)
class Topics:
    """Builds and parses the topics under one prefix (default `edgefleet/v1`)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise ProtocolError(f"invalid topic prefix {self.prefix!r}: use levels of [A-Za-z0-9._-] separated by '/'")

    def device(self, device_id: str, kind: TopicKind) -> str:
        """The topic of one kind for one device."""
        check_device_id(device_id)
        if kind not in TOPIC_KINDS:
            raise ProtocolError(f"unknown topic kind {kind!r}")
        return f"{self.prefix}/devices/{device_id}/{kind}"

    def state(self, device_id: str) -> str:
        """Retained birth / last-will topic."""
        return self.device(device_id, "state")

    def telemetry(self, device_id: str) -> str:
        """Load report topic."""
        return self.device(device_id, "telemetry")

    def telemetry_ack(self, device_id: str) -> str:
        """Hub -> device acknowledgements of stored load reports (one level below `telemetry`)."""
        return f"{self.telemetry(device_id)}/ack"

    def desired(self, device_id: str) -> str:
        """Retained hub -> device desired state topic."""
        return self.device(device_id, "desired")

    def reported(self, device_id: str) -> str:
        """Retained device -> hub reconciled state topic."""
        return self.device(device_id, "reported")

    def events(self, device_id: str) -> str:
        """Install progress and warnings topic."""
        return self.device(device_id, "events")

    def all_devices(self, kind: TopicKind) -> str:
        """Wildcard filter matching one kind for every device."""
        return f"{self.prefix}/devices/+/{kind}"

    def shared(self, group: str, kind: TopicKind) -> str:
        """Shared-subscription filter so several hub replicas split one kind's messages."""
        if not _GROUP.fullmatch(group):
            raise ProtocolError(f"invalid shared subscription group {group!r}")
        return f"$share/{group}/{self.all_devices(kind)}"

    def parse(self, topic: str) -> ParsedTopic:
        """Split a concrete device topic; ProtocolError if it is not one of ours."""
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            raise ProtocolError(f"topic {topic!r} is not under {head!r}")
        rest = topic[len(head) :].split("/")
        if len(rest) != 2:
            raise ProtocolError(f"topic {topic!r} is not {head}<id>/<kind>")
        device_id, kind = rest
        check_device_id(device_id)
        if kind not in TOPIC_KINDS:
            raise ProtocolError(f"topic {topic!r} has unknown kind {kind!r}")
        return ParsedTopic(device_id, kind)  # type: ignore[arg-type]  # narrowed by the check above


def check_device_id(device_id: str) -> str:
    """Return `device_id` if it is usable as a CN and a topic level, else raise ProtocolError."""
    if not _DEVICE_ID.fullmatch(device_id):
        raise ProtocolError(f"invalid device id {device_id!r}: 1-128 chars of [A-Za-z0-9._-]")
    return device_id
