"""The agent's HTTP transport: the KServe V2 REST API (Triton-compatible), /metrics and OpenAPI."""

from edge_agent.http.app import make_app

__all__ = ["make_app"]
