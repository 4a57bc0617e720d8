"""The cell follows the store: the main process's reconciler installs and switches versions (store pointer
first, see reconcile/activate.py); the cell polls the active pointers of its models and loads, warms and
switches to the new version itself, then unloads the old one once drained. The cell never writes the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from pathlib import Path

from edge_agent.config import AgentConfig
from edge_agent.serving.core import ServingCore
from edge_agent.store import ModelStore, served
from models.package import ModelPackage

__all__ = ["StoreFollower", "read_store"]

log = logging.getLogger(__name__)

POLL_S = 0.5
DRAIN_GRACE_S = 0.5


def read_store(config: AgentConfig, models: Collection[str]) -> tuple[list[ModelPackage], dict[str, str]]:
    """The packages the cell serves (active version of each of `models`, plus pinned versions), read-only:
    no import, no clean-up of the main process's in-flight installs (blocking I/O)."""
    if config.state_dir is None:
        raise ValueError("the safety cell needs a state_dir (the model store)")
    return served(ModelStore(config.state_dir / "models"), sorted(models), config)


class StoreFollower:
    """Keeps `core` on the store's active version of each of `models` (poll every POLL_S)."""

    def __init__(self, core: ServingCore, store_root: Path, models: Collection[str]) -> None:
        self.core = core
        self.store = ModelStore(store_root)
        self.models = sorted(models)
        self._failed: dict[str, str] = {}  # model -> version whose load failed (not retried until it changes)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="safety-cell-follow")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            if self.core.started:
                await self.sync_once()

    async def sync_once(self) -> None:
        for name in self.models:
            try:
                wanted = await asyncio.to_thread(self.store.active, name)
            except Exception as exc:
                log.warning("cannot read the active pointer of %s: %s", name, exc)
                continue
            current = self.core.active_version(name)
            if wanted is None or wanted == current or self._failed.get(name) == wanted:
                continue
            try:
                await self._switch(name, wanted, current)
                self._failed.pop(name, None)
            except Exception as exc:
                self._failed[name] = wanted
                log.error("safety cell: cannot serve %s:%s (staying on %s): %s", name, wanted, current, exc)

    async def _switch(self, name: str, version: str, old: str | None) -> None:
        if version not in self.core.models().get(name, {}):
            pkg = await asyncio.to_thread(self.store.package, name, version)
            await self.core.load(pkg)
        self.core.activate(name, version)
        log.info("safety cell: model %s switched to version %s (was %s)", name, version, old)
        if old is None or old == version:
            return
        await asyncio.sleep(DRAIN_GRACE_S)
        pinned = {p.version for p in self.core.pipelines().values() if p.model == name}
        if self.core.active_version(name) != old and old not in pinned:
            await self.core.unload(name, old)
