"""Triton's model repository extension on an edge agent: the index, and explicit load/unload where it means
something.

On a fleet device the hub's desired state decides which models run (the reconciler installs, warms up and
switches them); an operator on the device must not fight it, so explicit load/unload is refused there, as
Triton refuses it outside `--model-control-mode=explicit`. A standalone agent (development, a cloud pool) has
no desired state: there `load` (re)reads the model's packages from the configured model dirs and loads the
versions not loaded (a model that failed at start can be retried), and `unload` stops serving every version
of it (the V2 name then answers 404 until it is loaded again).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any

from edge_agent.errors import InvalidInput, NotFound, Unavailable
from edge_agent.serving.core import ServingCore
from edge_agent.store import collect, version_key
from models.package import ModelPackage

__all__ = ["ModelControl", "pipeline_models"]

FLEET_REFUSAL = (
    "explicit model load / unload is not allowed: this agent's models follow the hub's desired state "
    "(run `edge-agent serve --standalone` for explicit control)"
)


class ModelControl:
    """The repository index and, on a standalone agent, explicit load and unload."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core
        self._lock = asyncio.Lock()  # one load/unload at a time

    def index(self, *, ready_only: bool = False) -> list[dict[str, Any]]:
        """Triton's repository index: `{"name", "version", "state", "reason"}` per known model version."""
        core = self._core
        rows: list[dict[str, Any]] = []
        for name, versions in core.models().items():
            for version, model in versions.items():
                state = "READY" if model.ready else "LOADING"
                rows.append({"name": name, "version": version, "state": state, "reason": ""})
        for name, failed in core.failures().items():
            for version, reason in failed.items():
                rows.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason})
        if ready_only:
            rows = [r for r in rows if r["state"] == "READY"]
        return sorted(rows, key=lambda r: (r["name"], version_key(r["version"])))

    def _check_allowed(self) -> None:
        if not self._core.config.standalone:
            raise InvalidInput(FLEET_REFUSAL)

    async def load(self, name: str, *, max_batch_size: int | None = None) -> None:
        """Load the model's versions found in the model dirs; InvalidInput naming why if it cannot.

        `max_batch_size` is Triton's override config (the one field supported): every version is reloaded
        with that batch limit. The signed package's files are unchanged; the limit is this process's only."""
        self._check_allowed()
        core = self._core
        async with self._lock:
            packages, active = await asyncio.to_thread(collect, core.config)
            mine = [p for p in packages if p.manifest.name == name]
            if not mine:
                raise InvalidInput(f"failed to load '{name}', failed to poll from model repository")
            if max_batch_size is not None:
                mine = [_with_batch(name, p, max_batch_size) for p in mine]
                core._registry.deactivate(name)  # reload every version with the override (as Triton does)
                for version in list(core.models().get(name, {})):
                    await core.unload(name, version)
            loaded = core.models().get(name, {})
            for pkg in mine:
                if pkg.manifest.version in loaded:
                    continue
                try:
                    await core.load(pkg)
                except Exception as exc:
                    with contextlib.suppress(Exception):
                        await core.unload(name, pkg.manifest.version)
                    raise InvalidInput(f"failed to load '{name}' version {pkg.manifest.version}: {exc}") from exc
            versions = core.models().get(name, {})
            target = active.get(name) or max(versions, key=version_key)
            core.activate(name, target)
            if name not in core.pipelines():
                core.set_pipelines([])  # exposes it again (standalone agents expose every model)

    async def unload(self, name: str) -> None:
        """Stop serving every version of `name`; NotFound if none is loaded."""
        self._check_allowed()
        core = self._core
        async with self._lock:
            versions = core.models().get(name)
            if not versions:
                raise NotFound(f"Request for unknown model: '{name}' is not found")
            # The active version may not be unloaded while it is active: make none active first.
            core._registry.deactivate(name)  # core.py is at its 400-line cap; the registry is the core's own
            for version in list(versions):
                await core.unload(name, version)


def _with_batch(name: str, pkg: ModelPackage, max_batch_size: int) -> ModelPackage:
    """`pkg` with another batch limit in memory; a model without a batch axis cannot take one."""
    if (pkg.manifest.max_batch_size == 0) != (max_batch_size == 0):
        why = f"max_batch_size {max_batch_size} would change whether the model has a batch axis"
        raise InvalidInput(f"failed to load '{name}': {why}")
    return replace(pkg, manifest=pkg.manifest.model_copy(update={"max_batch_size": max_batch_size}))


def pipeline_models(core: ServingCore) -> dict[str, tuple[str, str]]:
    """Served V2 name -> (model name, version) it resolves to now (edgefleet_pipeline_info)."""
    served: dict[str, tuple[str, str]] = {}
    for name in core.pipelines():
        with contextlib.suppress(NotFound, Unavailable):
            model = core.resolve(name).model
            served[name] = (model.name, model.version)
    return served
