#!/usr/bin/env python3
"""atheris harness for the MQTT side: wire models, topic parsing, the hub's and the agent's dispatch.

    .venv/bin/python tests/fuzz/fuzz_mqtt.py -atheris_runs=100000 [corpus_dir]

Each input is split into a topic and a payload. Fails when a model raises anything but ValidationError,
Topics.parse anything but ProtocolError, or a dispatcher raises or counts an internal error.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

import atheris  # noqa: E402

with atheris.instrument_imports(include=["protocols", "cloud_hub.ingest", "edge_agent.fleet.mqtt_link"]):
    import cloud_hub.ingest.dispatch  # noqa: F401
    import edge_agent.fleet.mqtt_link  # noqa: F401
    import protocols.messages
    import protocols.topics  # noqa: F401

from fuzz_targets import TOPICS, AgentDispatch, HubDispatch, messages, topic_parse  # noqa: E402

HUB = HubDispatch()
AGENT = AgentDispatch()
KINDS = ("state", "telemetry", "reported", "events", "desired")


def test_one_input(data: bytes) -> None:
    """One fuzz input: a topic (free text, or a device topic with fuzzed parts) and a payload."""
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        topic = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 80))
    else:
        device = (
            fdp.PickValueInList(["dev-fuzz", "dev-revoked", "x"])
            if fdp.ConsumeBool()
            else fdp.ConsumeUnicodeNoSurrogates(12)
        )
        topic = f"{TOPICS.prefix}/devices/{device}/{fdp.PickValueInList(list(KINDS))}"
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    messages(payload)
    topic_parse(topic)
    HUB(topic, payload)
    AGENT(payload)


def main() -> None:
    """Run libFuzzer with the command-line options."""
    logging.disable(logging.CRITICAL)  # dropped messages are logged one by one; that is not under test
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
    print(f"hub dispatched {HUB.count}, agent dispatched {AGENT.count}")


if __name__ == "__main__":
    main()
