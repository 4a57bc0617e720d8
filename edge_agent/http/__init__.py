"""The agent's HTTP transport: the KServe V2 REST API (Triton-compatible), /metrics and OpenAPI."""

from edge_agent.http.app import CONFIG_KEY, CORE_KEY, METRICS_KEY, STARTUP_KEY, make_app

__all__ = ["CONFIG_KEY", "CORE_KEY", "METRICS_KEY", "STARTUP_KEY", "make_app"]
