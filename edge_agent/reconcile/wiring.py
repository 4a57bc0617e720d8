"""Builds the reconciler of a running agent from its app (serving core, metrics) and the fleet service."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from edge_agent.fleet.identity import DeviceIdentity, client_ssl_context
from edge_agent.fleet.service import FleetService
from edge_agent.http.keys import CORE_KEY, METRICS_KEY, STARTUP_KEY
from edge_agent.metrics import Metrics
from edge_agent.reconcile.activate import Activator
from edge_agent.reconcile.download import Downloader
from edge_agent.reconcile.policy import PolicyGate
from edge_agent.reconcile.reconciler import Reconciler
from edge_agent.reconcile.reporter import Reporter
from edge_agent.reconcile.state import ReconcileState
from edge_agent.reconcile.verify import pinned_keys
from edge_agent.serving import ServingCore
from edge_agent.store import ModelStore
from protocols.messages import PoolEndpoint

__all__ = ["build_reconciler", "safety_activity"]

log = logging.getLogger(__name__)

STATE_SUBDIR = "reconcile"


def safety_activity(core: ServingCore, metrics: Metrics) -> tuple[int, bool]:
    """(requests answered so far on safety pipelines, whether a safety model has rows queued)."""
    if not core.started:
        return 0, False
    pipelines = {n: p for n, p in core.pipelines().items() if p.priority == "safety"}
    if not pipelines:
        return 0, False
    seen = 0
    for family in metrics.requests.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("model") in pipelines:
                seen += int(sample.value)
    models = {p.model for p in pipelines.values()}
    queued = any(rows > 0 for key, rows in core.batcher.queue_rows().items() if key.split(":", 1)[0] in models)
    return seen, queued


def _pool_sink(core: ServingCore) -> Callable[[Sequence[PoolEndpoint]], None] | None:
    """Desired pools to the offload router; an empty set means the pools of the local config."""
    router = core.router
    if router is None:
        return None

    def sink(pools: Sequence[PoolEndpoint]) -> None:
        router.set_pools(pools or core.config.pools)

    return sink


def build_reconciler(app: web.Application, service: FleetService, identity_dir: Path, state_dir: Path) -> Reconciler:
    """A reconciler for `app`, subscribed to the service's desired state (blocking: reads files)."""
    identity = DeviceIdentity.load(identity_dir)
    core, metrics = app[CORE_KEY], app[METRICS_KEY]
    keys = pinned_keys(identity.signing_keys)
    if not keys:
        log.warning("the identity pins no model-signing key: every artifact will fail verification")
    state = ReconcileState(state_dir / STATE_SUBDIR)
    ssl_context = client_ssl_context(identity.cafile, identity.certfile, identity.keyfile)
    link = service.link
    reconciler = Reconciler(
        state=state,
        activator=Activator(core, ModelStore(state_dir / "models"), keys),
        downloader=Downloader(state.downloads, ssl_context),
        keys=keys,
        reporter=Reporter(link, link.topics, identity.device_id),
        gate=PolicyGate(lambda: safety_activity(core, metrics)),
        ready=app[STARTUP_KEY],
        pools=_pool_sink(core),
    )
    reconciler.open()
    link.on_desired(reconciler.on_desired)
    return reconciler
