"""The reconciler: brings the device to the desired state the hub retained for it, one model at a time.

Per desired model whose version is not already active:

    pending -> downloading (progress) -> verifying -> [install] -> preparing -> warming -> (held) -> active
                                                                                        \\-> failed (error)

A version already on disk (a rollback, or a restart after install) skips the download: its installed copy
is verified against the desired signature and its file hashes instead. Every step leaves the working
version serving; a failure is persisted for that revision and not retried until a newer revision comes.

A newer revision cancels the work on the older one at the next await (the switch itself is never cut in
half) and starts over; downloads resume from their partial files. The desired state is persisted before
anything is done for it, and read back at start, so a restart (crash included) carries on from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence

from edge_agent.reconcile.activate import Activator
from edge_agent.reconcile.download import Downloader
from edge_agent.reconcile.errors import ReconcileError
from edge_agent.reconcile.faults import checkpoint
from edge_agent.reconcile.policy import PolicyGate
from edge_agent.reconcile.reporter import Reporter
from edge_agent.reconcile.state import Failure, ReconcileState
from edge_agent.reconcile.trials import FAILURE_PREFIX, overlay, referenced_versions
from edge_agent.reconcile.verify import verify_artifact, verify_installed
from models.signing import Ed25519PublicKey
from protocols.messages import DesiredModel, DesiredState, DesiredTrial, ModelPhase, ModelReport, PoolEndpoint

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)

PoolsSink = Callable[[Sequence[PoolEndpoint]], object]


def _reason(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, ReconcileError) else f"{type(exc).__name__}: {exc}"
    return text[:2000]


class Reconciler:
    """Owns the reconciliation task; `on_desired` is the MQTT link's desired-state callback."""

    def __init__(
        self,
        *,
        state: ReconcileState,
        activator: Activator,
        downloader: Downloader,
        keys: Mapping[str, Ed25519PublicKey],
        reporter: Reporter,
        gate: PolicyGate | None = None,
        ready: Awaitable[object] | None = None,
        pools: PoolsSink | None = None,
    ) -> None:
        self.state = state
        self.activator = activator
        self.core = activator.core
        self.downloader = downloader
        self.keys = keys
        self.reporter = reporter
        self.gate = gate or PolicyGate()
        self._ready = ready
        self._pools = pools
        self._desired: DesiredState | None = None
        self._booted = False
        self._boot: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._reports: dict[str, ModelReport] = {}
        self._trials: dict[str, ModelReport] = {}  # per trial's model: its candidate's progress
        self._applied: set[tuple[str, str]] = set()  # candidates the last revision applied (to drop later)
        self.converged = asyncio.Event()
        self.stale_revisions = 0  # desired states at or below the current revision, ignored (metrics)

    # --- life cycle ----------------------------------------------------------------------------------

    def open(self) -> None:
        """Prepare the state directory and read the persisted desired state (blocking I/O)."""
        self.state.open()
        self._desired = self.state.load_desired()
        if self._desired is not None:
            self._applied = {(t.candidate.name, t.candidate.version) for t in self._desired.trials}
            log.info("resuming reconciliation of persisted desired revision %s", self._desired.revision)

    @property
    def desired(self) -> DesiredState | None:
        """The latest accepted desired state."""
        return self._desired

    async def start(self) -> None:
        """Start the reporter, and reconcile the persisted desired state once the serving core is up."""
        self.reporter.start()
        self._boot = asyncio.create_task(self._start_when_ready(), name="reconcile-boot")

    async def _start_when_ready(self) -> None:
        if self._ready is not None:
            try:
                await self._ready
            except Exception as exc:
                log.error("reconciler not started: the serving core failed to start: %s", exc)
                return
        self._booted = True
        if self._desired is not None:
            self._schedule(self._desired)

    async def aclose(self) -> None:
        """Stop work (partial downloads are kept), close the downloader, flush the reporter."""
        for task in (self._boot, self._worker):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._boot, self._worker) if t is not None), return_exceptions=True)
        await self.downloader.aclose()
        await self.reporter.aclose()

    async def wait_idle(self) -> None:
        """Wait until the current revision's work has ended (tests)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.gather(self._worker, return_exceptions=True)

    # --- desired state -----------------------------------------------------------------------------------

    async def on_desired(self, desired: DesiredState) -> None:
        """Accept a newer revision: persist it, then (re)start reconciliation; older ones are ignored."""
        current = self._desired
        if current is not None and desired.revision <= current.revision:
            self.stale_revisions += 1
            log.debug("desired revision %s ignored (have %s)", desired.revision, current.revision)
            return
        try:
            await asyncio.to_thread(self.state.save_desired, desired)
        except OSError as exc:
            # A revision that cannot be made durable is not accepted (no work that a restart would forget),
            # but the hub must hear why: otherwise its rollout waits on this device for ever.
            error = f"cannot persist desired revision {desired.revision}: {exc}"
            log.error("%s", error)
            self._reports = {
                m.name: ModelReport(
                    name=m.name,
                    version=m.version,
                    state="failed",
                    active_version=self.core.active_version(m.name),
                    error=error,
                )
                for m in desired.models
            }
            self._trials = {}
            self._publish(desired)
            self.reporter.event("error", "install.failed", error, revision=desired.revision)
            return
        self._desired = desired
        log.info("desired revision %s accepted (rollout %s)", desired.revision, desired.rollout_id)
        self.reporter.event("info", "desired.received", f"revision {desired.revision}", revision=desired.revision)
        if self._booted:
            self._schedule(desired)

    def _schedule(self, desired: DesiredState) -> None:
        previous = self._worker
        self.converged.clear()
        self._worker = asyncio.create_task(self._work(desired, previous), name=f"reconcile-{desired.revision}")

    async def _work(self, desired: DesiredState, previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():
            previous.cancel()
            await asyncio.gather(previous, return_exceptions=True)
        failures = await asyncio.to_thread(self.state.failures, desired.revision)
        self._reports = {
            m.name: ModelReport(
                name=m.name, version=m.version, state="pending", active_version=self.core.active_version(m.name)
            )
            for m in desired.models
        }
        self._trials = {
            t.candidate.name: ModelReport(
                name=t.candidate.name,
                version=t.candidate.version,
                state="pending",
                active_version=self.core.active_version(t.candidate.name),
            )
            for t in desired.trials
        }
        self._publish(desired)
        self._apply_fleet_settings(desired)
        for model in desired.models:
            await self._reconcile(desired, model, failures.get(model.name))
        for trial in desired.trials:
            await self._reconcile_trial(desired, trial, failures.get(FAILURE_PREFIX + trial.candidate.name))
        self._apply_pipelines(desired)
        await self._drop_candidates(desired)
        keep = {m.sha256 for m in desired.models if self._reports[m.name].state not in ("active", "failed")}
        keep |= {t.candidate.sha256 for t in desired.trials if self._trials[t.candidate.name].state != "active"}
        await asyncio.to_thread(self.state.prune_downloads, keep)
        if all(r.state == "active" for r in (*self._reports.values(), *self._trials.values())):
            log.info("desired revision %s converged", desired.revision)
            self.converged.set()

    def _apply_fleet_settings(self, desired: DesiredState) -> None:
        if self._pools is not None:
            # Empty = the locally configured pools (the sink restores them), non-empty replaces them.
            self._pools(desired.pools)
        elif desired.pools:
            log.warning("desired revision %s names pools, but this agent does not offload", desired.revision)

    def _apply_pipelines(self, desired: DesiredState) -> None:
        """Serve the desired pipelines (after the models they need are in; empty = the local config's), with
        the ready trials applied to those of their model."""
        ready = {name for name, r in self._trials.items() if r.state == "active"}
        specs, problems = list(desired.pipelines), list[str]()
        if ready:
            specs, problems = overlay(specs or self.core.config.pipelines, desired.trials, ready)
        for problem in problems:
            log.warning("desired revision %s: %s", desired.revision, problem)
            self.reporter.event("warning", "trial.skipped", problem, revision=desired.revision)
        for problem in self.core.set_pipelines(specs):
            log.warning("desired revision %s: %s; pipeline skipped", desired.revision, problem)
            self.reporter.event("warning", "pipelines.skipped", problem, revision=desired.revision)

    async def _reconcile_trial(self, desired: DesiredState, trial: DesiredTrial, failed: Failure | None) -> None:
        """Install, verify, load and warm the candidate (never switched to); its report says `active` once ready."""
        model = trial.candidate
        name, version = model.name, model.version
        serving = self._reports.get(name)
        if failed is not None and failed.version == version:
            self._set(desired, model, "failed", trial=True, error=failed.error)
            return
        if serving is None or serving.state != "active":
            self._set(desired, model, "failed", trial=True, error=f"{name} is not active at its desired version")
            return
        try:
            if not self.activator.loaded(name, version):
                if await asyncio.to_thread(self.activator.installed, name, version):
                    self._set(desired, model, "verifying", trial=True)
                    pkg = await asyncio.to_thread(self.activator.store.package, name, version)
                    await asyncio.to_thread(verify_installed, pkg, model, self.keys)
                else:
                    await self._download_and_install(desired, model, trial=True)
                self._set(desired, model, "preparing", trial=True)
                await self.activator.prepare(name, version, lambda _: self._set(desired, model, "warming", trial=True))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = _reason(exc)
            log.error("trial %s:%s failed: %s", name, version, error)
            with contextlib.suppress(OSError):
                failure = Failure(version, error)
                await asyncio.to_thread(self.state.record_failure, desired.revision, FAILURE_PREFIX + name, failure)
            self._set(desired, model, "failed", trial=True, error=error)
            self.reporter.event("error", "trial.failed", error, model=name, version=version, revision=desired.revision)
            return
        self._set(desired, model, "active", trial=True)
        self.reporter.event("info", "trial.ready", f"{trial.mode} of {name} {version} at {trial.share:.0%}",
                            model=name, version=version, revision=desired.revision)  # fmt: skip

    async def _drop_candidates(self, desired: DesiredState) -> None:
        """Unload candidates of earlier trials that nothing serves any more (kept on disk)."""
        current = {(t.candidate.name, t.candidate.version) for t in desired.trials}
        served = self.core.pipelines()
        for name, version in sorted(self._applied - current):
            if self.core.active_version(name) != version and version not in referenced_versions(served, name):
                await self.activator.discard(name, version)
                log.info("trial candidate %s:%s unloaded", name, version)
        self._applied = current

    # --- one model ---------------------------------------------------------------------------------------

    def _set(
        self, desired: DesiredState, model: DesiredModel, phase: ModelPhase, *, trial: bool = False, **extra: object
    ) -> None:
        (self._trials if trial else self._reports)[model.name] = ModelReport(
            name=model.name,
            version=model.version,
            state=phase,
            active_version=self.core.active_version(model.name),
            **extra,
        )
        self._publish(desired)

    def _publish(self, desired: DesiredState) -> None:
        trials = [self._trials[t.candidate.name] for t in desired.trials if t.candidate.name in self._trials]
        self.reporter.report(desired.revision, [self._reports[m.name] for m in desired.models], trials)

    async def _reconcile(self, desired: DesiredState, model: DesiredModel, failed: Failure | None) -> None:
        name, version = model.name, model.version
        if failed is not None and failed.version == version:
            self._set(desired, model, "failed", error=failed.error)
            return
        if self.core.active_version(name) == version:
            await self._pin(name, version)
            self._set(desired, model, "active")
            return
        log.info("reconciling %s: %s -> %s", name, self.core.active_version(name), version)
        try:
            await self._bring_up(desired, model)
        except asyncio.CancelledError:
            log.info("work on %s:%s superseded by a newer revision", name, version)
            raise
        except Exception as exc:
            error = _reason(exc)
            log.error("%s:%s failed: %s", name, version, error)
            try:
                await asyncio.to_thread(self.state.record_failure, desired.revision, name, Failure(version, error))
            except OSError as record_exc:  # e.g. a read-only or full state dir: still report the failure
                log.error("cannot record the failure of %s:%s: %s", name, version, record_exc)
            self._set(desired, model, "failed", error=error)
            self.reporter.event(
                "error", "install.failed", error, model=name, version=version, revision=desired.revision
            )

    async def _pin(self, name: str, version: str) -> None:
        """Make the store's pointer agree with what serves (e.g. a version first activated from model_dirs)."""
        with contextlib.suppress(ReconcileError, OSError, LookupError):
            if await asyncio.to_thread(self.activator.store.active, name) != version:
                await asyncio.to_thread(self.activator.store.activate, name, version)

    async def _bring_up(self, desired: DesiredState, model: DesiredModel) -> None:
        name, version, rev = model.name, model.version, desired.revision
        if await asyncio.to_thread(self.activator.installed, name, version):
            self._set(desired, model, "verifying")
            pkg = await asyncio.to_thread(self.activator.store.package, name, version)
            await asyncio.to_thread(verify_installed, pkg, model, self.keys)
        else:
            await self._download_and_install(desired, model)
        self._set(desired, model, "preparing")
        await self.activator.prepare(name, version, lambda phase: self._set(desired, model, "warming"))
        await checkpoint("after_prepare")
        if not self.gate.allowed_now(desired.apply):
            self._set(desired, model, "held")
            self.reporter.event("info", "install.held", f"waiting for apply policy {desired.apply.mode}",
                                model=name, version=version, revision=rev)  # fmt: skip
            await self.gate.wait(desired.apply)
        await checkpoint("before_switch")
        switch = asyncio.create_task(self.activator.switch(name, version), name=f"switch-{name}")
        try:
            old = await asyncio.shield(switch)
        except asyncio.CancelledError:
            # Never leave a switch half done: let it finish, then give way to the newer revision.
            with contextlib.suppress(Exception):
                await switch
            raise
        await checkpoint("after_switch")
        self._set(desired, model, "active")
        self.reporter.event("info", "install.activated", f"{name} {version} active (was {old})",
                            model=name, version=version, revision=rev)  # fmt: skip
        if old is not None:
            await self.activator.retire(name, old)

    async def _download_and_install(self, desired: DesiredState, model: DesiredModel, *, trial: bool = False) -> None:
        last = [-1.0]

        def progress(done: int, total: int) -> None:
            fraction = done / total if total else 1.0
            if fraction - last[0] >= 0.01 or done == total:
                last[0] = fraction
                self._set(desired, model, "downloading", trial=trial, progress=round(min(fraction, 1.0), 4))

        self._set(desired, model, "downloading", trial=trial, progress=0.0)
        tar = await self.downloader.fetch(model, progress)
        await checkpoint("after_download")
        self._set(desired, model, "verifying", trial=trial)
        staging = self.state.staging_dir(model.sha256)
        try:
            await asyncio.to_thread(verify_artifact, tar, model, self.keys, staging)
            await checkpoint("after_verify")
            await self.activator.install(staging)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        await asyncio.to_thread(tar.unlink, True)
        await checkpoint("after_install")
        self.reporter.event("info", "install.installed", f"{model.name} {model.version} installed",
                            model=model.name, version=model.version, revision=desired.revision)  # fmt: skip
