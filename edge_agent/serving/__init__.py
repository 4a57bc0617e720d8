"""The serving path: the core (pipelines, inference), the model registry, admission and per-pipeline stats.

Modules are imported by their own names (`edge_agent.serving.core`, ...): this package re-exports nothing,
so importing one part (fleet telemetry reads `stats`) never pulls in the rest.
"""
