"""The agent side of the fleet link: identity and provisioning, MQTT link, telemetry and its spool."""
