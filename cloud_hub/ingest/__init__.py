"""Telemetry ingest: MQTT link (paho on asyncio), per-message validation and dispatch, batched DB writes."""
