"""Fleet services: claims and provisioning, the device registry, and the live in-memory view of the fleet."""
