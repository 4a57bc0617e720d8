"""Every way to run edgefleet: broker config, containers, compose, Kubernetes, systemd, and local processes."""
