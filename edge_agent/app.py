"""Assembles `edge-agent serve`: metrics, the serving core, the HTTP app and, on a fleet device, the fleet
service (MQTT link + telemetry) and the reconciler, as owned background services; runs and stops them.

This is the one module that wires the agent's parts together: http, fleet and reconcile never look each other
up. The services live in the aiohttp app's cleanup_ctx, in order: the serving core first (models load in an
owned task while HTTP answers live/not-ready), then the fleet side, which is stopped before the core.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from aiohttp import web

from edge_agent.cell.follow import StoreFollower, read_store
from edge_agent.cell.forward import CellClient, CombinedStats, Forwarder
from edge_agent.cell.priority import apply as apply_priority
from edge_agent.cell.priority import realtime
from edge_agent.cell.roles import cell_config, main_config, safety_models, safety_names
from edge_agent.cell.routes import cell_routes
from edge_agent.config import AgentConfig, FleetConfig
from edge_agent.fleet.identity import DeviceIdentity, client_ssl_context
from edge_agent.fleet.link_metrics import LinkCollector
from edge_agent.fleet.service import FleetService
from edge_agent.fleet.telemetry_metrics import TelemetryCollector
from edge_agent.http.app import make_app
from edge_agent.http.auth import read_token
from edge_agent.http.sites import Listeners, bound_port
from edge_agent.http.sites import sites as listener_sites_for
from edge_agent.metrics import Metrics
from edge_agent.reconcile.activate import Activator
from edge_agent.reconcile.download import Downloader
from edge_agent.reconcile.policy import PolicyGate
from edge_agent.reconcile.reconciler import Reconciler
from edge_agent.reconcile.reporter import Reporter
from edge_agent.reconcile.state import ReconcileState
from edge_agent.reconcile.verify import pinned_keys
from edge_agent.serving.control import pipeline_models
from edge_agent.serving.core import ServingCore
from edge_agent.serving.stats import PipelineStatsSource
from edge_agent.store import ModelStore, collect
from models.package import ModelPackage
from protocols.messages import InstalledModel, PoolEndpoint

__all__ = ["Agent", "Listeners", "build_reconciler", "safety_activity", "serve"]

logger = logging.getLogger("edge_agent")
log = logging.getLogger(__name__)

STATE_SUBDIR = "reconcile"
SHUTDOWN_TIMEOUT_S = 30.0

Activity = Callable[[], tuple[int, bool]]
Loader = Callable[[AgentConfig], tuple[list[ModelPackage], dict[str, str]]]


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
    queued = any(rows > 0 for key, rows in core.queue_rows().items() if key.model in models)
    return seen, queued


def _pool_sink(core: ServingCore) -> Callable[[Sequence[PoolEndpoint]], None] | None:
    """Desired pools to the offload router; an empty set means the pools of the local config."""
    router = core.router
    if router is None:
        return None

    def sink(pools: Sequence[PoolEndpoint]) -> None:
        router.set_pools(pools or core.config.pools)

    return sink


def build_reconciler(
    core: ServingCore,
    metrics: Metrics,
    service: FleetService,
    *,
    identity_dir: Path,
    state_dir: Path,
    ready: asyncio.Future[None],
    activity: Activity | None = None,
) -> Reconciler:
    """A reconciler of `core`, subscribed to the service's desired state (blocking: reads files).

    `ready` completes once the models of the local store are loaded: the reconciler acts only after that.
    `activity` tells the policy gate about safety traffic (default: the core's own safety pipelines).
    """
    identity = DeviceIdentity.load(identity_dir)
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
        gate=PolicyGate(activity or (lambda: safety_activity(core, metrics))),
        ready=ready,
        pools=_pool_sink(core),
    )
    reconciler.open()
    link.on_desired(reconciler.on_desired)
    return reconciler


class Agent:
    """One agent: its metrics, serving core and HTTP app, plus the fleet service and reconciler when the config
    has `[fleet]` and is not standalone. Running the HTTP app (`serve`, or a test client) runs them all.

    `loader` reads the packages to serve (default: import model_dirs into the store and read it); the main
    process of a safety cell passes the cell's `activity` and `cell_pipelines` (and sets `telemetry_stats`).
    Raises ConfigError when http.token_file is set but unusable.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        metrics: Metrics | None = None,
        loader: Loader = collect,
        activity: Activity | None = None,
        cell_pipelines: frozenset[str] = frozenset(),
    ) -> None:
        self.config = config
        self._cell_pipelines = cell_pipelines
        self._loader = loader
        self._activity = activity
        self.metrics = metrics if metrics is not None else Metrics()
        self.core = ServingCore(config, metrics=self.metrics)
        self.http = make_app(self.core, self.metrics, config.http)
        # What telemetry reports: this core's pipelines (the main process of a safety cell adds the cell's).
        self.telemetry_stats: PipelineStatsSource = self.core.stats
        self.metrics.watch(self._queue_rows, self._model_ready, lambda: pipeline_models(self.core))
        # Set once the fleet side started (None: standalone, no [fleet], or its identity could not be read).
        self.fleet: FleetService | None = None
        self.reconciler: Reconciler | None = None
        self._startup: asyncio.Task[None] | None = None
        self.http.cleanup_ctx.append(self._serving_ctx)
        fleet, state_dir = config.fleet, config.state_dir
        if fleet is not None and not config.standalone and state_dir is not None:
            self.http.cleanup_ctx.append(lambda _app: self._fleet_ctx(fleet, state_dir))

    @property
    def startup(self) -> asyncio.Task[None]:
        """Loading the models (exists once the HTTP app started): done when loaded, or failed with why."""
        if self._startup is None:
            raise RuntimeError("the agent has not started: run its HTTP app first")
        return self._startup

    # --- what the metrics and the fleet read from the core ---------------------------------------

    def _queue_rows(self) -> dict[str, int]:
        return {str(key): rows for key, rows in self.core.queue_rows().items()}

    def _model_ready(self) -> dict[str, bool]:
        ready = {m.label: m.ready for versions in self.core.models().values() for m in versions.values()}
        failed = {f"{name}:{version}": False for name, vs in self.core.failures().items() for version in vs}
        return {**failed, **ready}

    def _installed(self) -> list[InstalledModel]:
        core = self.core
        failed = [
            InstalledModel(name=name, version=version, active=False, error=why[:2000])
            for name, versions in core.failures().items()
            for version, why in versions.items()
        ]
        return [
            *failed,
            *(
                InstalledModel(name=name, version=version, active=core.active_version(name) == version)
                for name, versions in core.models().items()
                for version in versions
            ),
        ]

    def _pipelines(self) -> list[str]:
        return sorted(set(self.core.pipelines()) | self._cell_pipelines)

    # --- the owned services ----------------------------------------------------------------------

    async def _load(self) -> None:
        packages, active = await asyncio.to_thread(self._loader, self.config)
        await self.core.start(packages, active)

    async def _serving_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        """Load models in an owned task (HTTP answers live/not-ready meanwhile); unload on shutdown."""
        task = asyncio.create_task(self._load(), name="edge-agent-startup")
        self._startup = task
        yield
        if not task.done():
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.error("startup had failed: %s", exc)
        await self.core.aclose()

    async def _fleet_ctx(self, fleet: FleetConfig, state_dir: Path) -> AsyncIterator[None]:
        """The fleet link, telemetry and reconciler for the app's lifetime; serving never depends on them."""
        # Identity files and the hardware probe are read off the event loop; a missing identity is
        # logged and serving carries on without the fleet link (serving never depends on the broker).
        try:
            service = await asyncio.to_thread(
                FleetService.from_config,
                fleet,
                state_dir,
                stats=self.telemetry_stats,
                models=self._installed,
                pipelines=self._pipelines,
            )
        except Exception:
            log.exception("fleet link disabled: cannot start it")
            yield
            return
        # The reconciler subscribes to desired state before the link starts, so no retained message is missed.
        reconciler = await asyncio.to_thread(
            build_reconciler,
            self.core,
            self.metrics,
            service,
            identity_dir=fleet.identity_dir,
            state_dir=state_dir,
            ready=self.startup,
            activity=self._activity,
        )
        self.fleet, self.reconciler = service, reconciler
        self.metrics.registry.register(LinkCollector(service.link, lambda: reconciler.stale_revisions))
        self.metrics.registry.register(TelemetryCollector(service.telemetry))
        await service.start()
        await reconciler.start()
        try:
            yield
        finally:
            await reconciler.aclose()
            await service.aclose()


def _cell_agent(config: AgentConfig, listeners: Listeners) -> Agent:
    """The safety cell: its pipelines only, models read from the store, following the store's switches."""
    cell = cell_config(config)
    models = safety_models(config)
    agent = Agent(cell, loader=lambda c: read_store(c, models))
    agent.core.safety_cell_url = listeners.cell_url
    agent.http.add_routes(cell_routes(agent.core, lambda: safety_activity(agent.core, agent.metrics)))
    state_dir = cell.state_dir
    assert state_dir is not None  # has_cell: never standalone, so state_dir is set

    async def follow(_app: web.Application) -> AsyncIterator[None]:
        follower = StoreFollower(agent.core, state_dir / "models", models)
        follower.start()
        yield
        await follower.aclose()

    agent.http.cleanup_ctx.append(follow)
    return agent


def _token(config: AgentConfig) -> str | None:
    return None if config.http.token_file is None else read_token(config.http.token_file)


def _main_agent(config: AgentConfig, listeners: Listeners) -> Agent:
    """The main process: every other pipeline; safety names forwarded to the cell, its load read from it."""
    assert listeners.cell_url is not None
    client = CellClient(listeners.cell_url, listeners.cell_socket, _token(config))
    names = safety_names(config)
    agent = Agent(main_config(config), activity=client.activity, cell_pipelines=names)
    agent.telemetry_stats = CombinedStats(agent.core.stats, client)
    agent.core.safety_cell_url = listeners.cell_url
    agent.core.safety_elsewhere = names
    agent.core.safety_elsewhere = names
    forwarder = Forwarder(names, client)
    agent.http.middlewares.insert(0, forwarder.middleware)

    async def close(_app: web.Application) -> AsyncIterator[None]:
        yield
        await forwarder.aclose()

    agent.http.cleanup_ctx.append(close)
    return agent


async def _before_ready(config: AgentConfig, listeners: Listeners) -> None:
    """The main process says "ready" for the whole agent: only once the safety cell serves too (the safety
    names it forwards must find it), or after 120 s without it (then the other pipelines serve regardless)."""
    if listeners.role != "main" or listeners.cell_url is None:
        return
    client = CellClient(listeners.cell_url, listeners.cell_socket, _token(config))
    if not await client.wait_ready():
        logger.warning("the safety cell is not ready after 120 s: serving the other pipelines")


def _ready_line(listeners: Listeners, config: AgentConfig, sites: list[web.BaseSite]) -> str:
    port = bound_port(sites[0]) or config.http.port
    if listeners.role == "cell":
        host = config.safety_cell.host
        unix = "" if config.safety_cell.unix_socket is None else f" and unix:{config.safety_cell.unix_socket}"
        return f"edge-agent safety cell serving on http://{host}:{port}{unix}"
    return f"edge-agent ready on http://{config.http.host}:{port}"


async def serve(config: AgentConfig, listeners: Listeners | None = None) -> int:
    """Run the agent (or one supervised role of it) until SIGTERM/SIGINT; the exit status (1 if the models
    failed to load)."""
    listeners = listeners or Listeners()
    if listeners.role == "cell":
        cell = config.safety_cell
        applied = apply_priority(nice=cell.nice, rr_priority=None, oom_score_adj=cell.oom_score_adj)
        logger.info("safety cell: %s", applied)
        agent = _cell_agent(config, listeners)
    elif listeners.role == "main":
        cell = config.safety_cell
        applied = apply_priority(nice=cell.main_nice, rr_priority=None, oom_score_adj=cell.main_oom_score_adj)
        logger.info("main process: %s", applied)
        agent = _main_agent(config, listeners)
    else:
        agent = Agent(config)
    runner = web.AppRunner(agent.http, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        sites = await listener_sites_for(runner, config, listeners)
        for site in sites:
            await site.start()
        startup = agent.startup
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({startup, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if startup.done():
            if startup.exception() is not None:
                print(f"edge-agent: start failed: {startup.exception()}", file=sys.stderr, flush=True)
                return 1
            await _before_ready(config, listeners)
            print(_ready_line(listeners, config, sites), flush=True)
            logger.info("ready=%s", agent.core.ready())
            if listeners.role == "cell" and config.safety_cell.sched_rr_priority > 0:
                logger.info("safety cell: %s", realtime(config.safety_cell.sched_rr_priority))
            if listeners.ready_fd is not None:
                os.write(listeners.ready_fd, b"ready\n")
                os.close(listeners.ready_fd)
            await stopping
        else:
            startup.cancel()
        logger.info("shutting down: finishing in-flight requests")
        return 0
    finally:
        await runner.cleanup()
