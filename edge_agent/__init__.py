"""The edgefleet edge agent: V2 inference endpoint, model store, scheduler, and (later) fleet link."""

__version__ = "0.1.0"
