"""Scheduling of inference work: priority classes across models, batching, deadlines, execution lanes."""

from edge_agent.scheduler.batcher import Batcher, BatchObserver, QueueFull, SafetyLane
from edge_agent.scheduler.estimates import ServiceTimes
from edge_agent.scheduler.expiry import Clock, Timer
from edge_agent.scheduler.queue import Expired, ModelQueue, Request, RunBatch

__all__ = [
    "BatchObserver",
    "Batcher",
    "Clock",
    "Expired",
    "ModelQueue",
    "QueueFull",
    "Request",
    "RunBatch",
    "SafetyLane",
    "ServiceTimes",
    "Timer",
]
