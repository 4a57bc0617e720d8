"""Scheduling of inference work: per-model queues batched onto one execution lane per accelerator."""

from edge_agent.scheduler.batcher import Batcher, BatchObserver, Clock, Timer
from edge_agent.scheduler.queue import ModelQueue, Request, RunBatch

__all__ = ["BatchObserver", "Batcher", "Clock", "ModelQueue", "Request", "RunBatch", "Timer"]
