"""Topic builders and parsers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.common import ProtocolError
from protocols.topics import DEFAULT_PREFIX, TOPIC_KINDS, Topics, check_device_id

device_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,40}\Z")


@given(device_id=device_ids, kind=st.sampled_from(TOPIC_KINDS))
def test_build_then_parse_round_trips(device_id: str, kind: str) -> None:
    topics = Topics()
    topic = topics.device(device_id, kind)  # type: ignore[arg-type]
    parsed = topics.parse(topic)
    assert (parsed.device_id, parsed.kind) == (device_id, kind)


def test_default_prefix_and_layout() -> None:
    assert Topics().telemetry("cam-01") == f"{DEFAULT_PREFIX}/devices/cam-01/telemetry"
    assert Topics("acme/fleet").desired("x") == "acme/fleet/devices/x/desired"
    assert Topics().all_devices("state") == "edgefleet/v1/devices/+/state"
    assert Topics().shared("hub", "telemetry") == "$share/hub/edgefleet/v1/devices/+/telemetry"
    # One level below telemetry: the hub's `devices/+/telemetry` subscription does not match it.
    assert Topics().telemetry_ack("cam-01") == "edgefleet/v1/devices/cam-01/telemetry/ack"


@pytest.mark.parametrize("bad", ["", "a/+/b", "#", "/lead", "trail/", "$SYS", "a//b"])
def test_bad_prefix_rejected(bad: str) -> None:
    with pytest.raises(ProtocolError, match="invalid topic prefix"):
        Topics(bad)


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "-lead", "x" * 129, "a b"])
def test_bad_device_id_rejected(bad: str) -> None:
    with pytest.raises(ProtocolError, match="invalid device id"):
        check_device_id(bad)


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("other/v1/devices/a/state", "is not under"),
        ("edgefleet/v1/devices/a/b/state", "is not edgefleet/v1/devices/<id>/<kind>"),
        ("edgefleet/v1/devices/a/bogus", "unknown kind"),
        ("edgefleet/v1/devices/+/state", "invalid device id"),
    ],
)
def test_parse_refuses_foreign_topics(topic: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        Topics().parse(topic)


def test_shared_group_validated() -> None:
    with pytest.raises(ProtocolError, match="shared subscription group"):
        Topics().shared("a/b", "telemetry")
