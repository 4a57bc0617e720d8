"""Scheduling of inference work: priority classes across models, batching, deadlines, execution lanes."""

from edge_agent.scheduler.estimates import ServiceTimes
from edge_agent.scheduler.expiry import Clock, Timer
from edge_agent.scheduler.priority import BatchObserver, PriorityScheduler, QueueFull, SafetyLane
from edge_agent.scheduler.queue import Expired, ModelQueue, QueueKey, Request, RunBatch

__all__ = [
    "BatchObserver",
    "Clock",
    "Expired",
    "ModelQueue",
    "PriorityScheduler",
    "QueueFull",
    "QueueKey",
    "Request",
    "RunBatch",
    "SafetyLane",
    "ServiceTimes",
    "Timer",
]
