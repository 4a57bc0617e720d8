"""Desired-state reconciliation: download, verify, install, prepare, apply policy, switch, report."""

from edge_agent.reconcile.reconciler import Reconciler

__all__ = ["Reconciler"]
