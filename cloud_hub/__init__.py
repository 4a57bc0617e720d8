"""The edgefleet cloud hub: device registry, provisioning + CA, telemetry ingest, operator API + CLI."""

__version__ = "0.1.0"
