"""Overflow offload to cloud GPU pools over V2 HTTP, behind a circuit breaker per pool."""

from edge_agent.offload.breaker import BreakerState, CircuitBreaker
from edge_agent.offload.client import PoolClient, PoolError
from edge_agent.offload.router import OffloadRefused, OffloadRouter, Pool

__all__ = ["BreakerState", "CircuitBreaker", "OffloadRefused", "OffloadRouter", "Pool", "PoolClient", "PoolError"]
