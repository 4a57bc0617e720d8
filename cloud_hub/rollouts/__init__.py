"""Rollouts: per-device desired state, and the orchestrator that moves a model version through a fleet."""
