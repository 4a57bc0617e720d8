"""Install, prepare, switch and retire model versions: the steps that touch the store and the serving core.

Order of the switch: the store's active pointer first (durable: a restart serves the new version), then
routing in the serving core (new requests go to the new version, in-flight ones finish on the old). The
new version is fully prepared and warm before either happens, so a crash between the two only means the
restart serves the new, already proven version. The old version is unloaded after a short grace period
and once its queue has drained (ServingCore.unload waits for that); it stays on disk as the rollback target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from edge_agent.errors import AgentError
from edge_agent.reconcile.errors import ActivationError, PrepareError
from edge_agent.reconcile.faults import checkpoint
from edge_agent.serving.core import ServingCore
from edge_agent.store import ModelStore
from models.package import ModelPackage
from models.signing import Ed25519PublicKey

__all__ = ["Activator"]

log = logging.getLogger(__name__)

# Called with the phase the preparation reached: "warming" once the runtime is loaded.
PhaseCallback = Callable[[str], None]


class Activator:
    """The store + serving-core side of a rollout step."""

    def __init__(
        self,
        core: ServingCore,
        store: ModelStore,
        keys: Mapping[str, Ed25519PublicKey],
        *,
        drain_grace_s: float = 0.5,
        poll_s: float = 0.05,
    ) -> None:
        self.core = core
        self.store = store
        self.keys = keys
        self.drain_grace_s = drain_grace_s
        self.poll_s = poll_s

    def installed(self, name: str, version: str) -> bool:
        """True if the store holds this version (blocking: a stat)."""
        return version in self.store.versions(name)

    async def install(self, staged: Path) -> ModelPackage:
        """Copy a verified package into the store (atomic, verified again there, idempotent)."""
        return await asyncio.to_thread(self.store.install, staged, self.keys, verify=True)

    def loaded(self, name: str, version: str) -> bool:
        """True if the serving core has this version loaded and warm."""
        model = self.core.models().get(name, {}).get(version)
        return model is not None and model.ready

    async def prepare(self, name: str, version: str, on_phase: PhaseCallback | None = None) -> None:
        """Load the installed version into the serving core and warm it up (not served yet)."""
        if self.loaded(name, version):
            return
        if version in self.core.models().get(name, {}):
            await self.discard(name, version)  # a half-loaded leftover of an earlier attempt
        pkg = await asyncio.to_thread(self.store.package, name, version)
        load = asyncio.create_task(self.core.load(pkg), name=f"prepare-{name}-{version}")
        warming = False
        try:
            while not load.done():
                await asyncio.wait({load}, timeout=self.poll_s)
                # ServingCore registers the version before its warm-up: that is where "warming" starts.
                if not warming and version in self.core.models().get(name, {}):
                    warming = True
                    if on_phase is not None:
                        on_phase("warming")
            load.result()
        except asyncio.CancelledError:
            load.cancel()
            with contextlib.suppress(BaseException):
                await load
            await asyncio.shield(self.discard(name, version))
            raise
        except Exception as exc:
            await self.discard(name, version)
            step = "warm-up" if warming or version in self.core.models().get(name, {}) else "prepare"
            raise PrepareError(f"{step} of {name}:{version} failed: {exc}") from exc

    async def switch(self, name: str, version: str) -> str | None:
        """Make `version` the active one, on disk then in routing; returns the version it replaced."""
        old = self.core.active_version(name)
        try:
            await asyncio.to_thread(self.store.activate, name, version)
        except AgentError as exc:
            raise ActivationError(f"cannot write the active pointer of {name}: {exc}") from exc
        await checkpoint("during_switch")
        try:
            self.core.activate(name, version)
        except AgentError as exc:
            # Keep disk and memory in agreement: the old version stays active in both.
            with contextlib.suppress(AgentError):
                await asyncio.to_thread(self.store.rollback, name)
            raise ActivationError(f"cannot route {name} to {version}: {exc}") from exc
        log.info("model %s: switched to version %s (was %s)", name, version, old)
        return old if old != version else None

    async def retire(self, name: str, version: str) -> None:
        """Unload a version that is no longer served, after in-flight requests finished; then delete
        versions older than active and previous from disk (those two stay for an instant rollback)."""
        await asyncio.sleep(self.drain_grace_s)
        pinned = {p.version for p in self.core.pipelines().values() if p.model == name and p.version is not None}
        loaded = self.core.models().get(name, {})
        if self.core.active_version(name) != version and version in loaded and version not in pinned:
            await self.core.unload(name, version)
            log.info("model %s: version %s drained and unloaded (kept on disk)", name, version)
        keep = pinned | set(self.core.models().get(name, {}))
        try:
            await asyncio.to_thread(self.store.prune, name, keep)
        except (AgentError, OSError) as exc:
            log.warning("model %s: could not remove old versions: %s", name, exc)

    async def discard(self, name: str, version: str) -> None:
        """Unload a version that was loaded but never activated (failed or superseded)."""
        if self.core.active_version(name) == version or version not in self.core.models().get(name, {}):
            return
        try:
            await self.core.unload(name, version)
        except AgentError as exc:
            log.warning("could not unload %s:%s: %s", name, version, exc)
