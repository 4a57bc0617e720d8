"""The serving core: loaded models, pipelines (V2 model names), validation, and inference via the batcher.

Transports (HTTP now, others later) decode, call `route` + `infer`, and encode; they hold no model state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent import __version__
from edge_agent.config import AgentConfig
from edge_agent.errors import InferenceFailed, InvalidInput, NotFound, Unavailable
from edge_agent.fleet.stats import PipelineStats
from edge_agent.fleet.stats import Route as StatsRoute
from edge_agent.metrics import Metrics
from edge_agent.offload.router import OffloadRouter
from edge_agent.scheduler import Batcher, BatchObserver, Expired, ServiceTimes
from edge_agent.scheduler.admission import Admission, Served, budget_s, effective_rank
from edge_agent.store import version_key
from models.package import ModelPackage
from models.runtimes.base import Runtime
from models.runtimes.factory import create_runtime
from protocols.datatypes import numpy_dtype
from protocols.manifest import Manifest, TensorSpec
from protocols.pipeline import PipelineSpec

__all__ = ["LoadedModel", "Route", "Served", "ServingCore"]

logger = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray[Any, Any]]
SERVER_NAME = "edgefleet-edge-agent"
EXTENSIONS = ("binary_tensor_data", "parameters")


def _tensor_meta(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


@dataclass(eq=False)
class LoadedModel:
    """One loaded version of a model: its runtime, limits and precomputed input checks."""

    manifest: Manifest
    runtime: Runtime
    max_batch_size: int
    ready: bool = False
    key: str = field(init=False)
    # (name, datatype, dtype, spec shape) per input, in manifest order.
    checks: tuple[tuple[str, str, np.dtype[Any], tuple[int, ...]], ...] = field(init=False)
    output_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.key = f"{self.manifest.name}:{self.manifest.version}"
        self.checks = tuple((t.name, t.datatype, numpy_dtype(t.datatype), t.shape) for t in self.manifest.inputs)
        self.output_names = tuple(t.name for t in self.manifest.outputs)

    @property
    def name(self) -> str:
        """Model name."""
        return self.manifest.name

    @property
    def version(self) -> str:
        """Model version."""
        return self.manifest.version

    def validate(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> int:
        """Check inputs strictly against the metadata; returns the request's row count."""
        batching = self.max_batch_size > 0
        rows = -1
        for name, datatype, dtype, spec in self.checks:
            array = inputs.get(name)
            if array is None:
                raise InvalidInput(f"missing input {name!r} for model {self.key!r}")
            if array.dtype != dtype:
                raise InvalidInput(f"input {name!r}: datatype mismatch, model expects {datatype}")
            shape = array.shape
            if len(shape) != len(spec) or any(s not in (-1, a) for s, a in zip(spec, shape, strict=True)):
                raise InvalidInput(f"input {name!r}: shape {list(shape)} does not match model shape {list(spec)}")
            if batching:
                if rows == -1:
                    rows = shape[0]
                elif shape[0] != rows:
                    raise InvalidInput(f"input {name!r}: batch size {shape[0]} differs from other inputs ({rows})")
        if len(inputs) != len(self.checks):
            extra = sorted(set(inputs) - {c[0] for c in self.checks})
            raise InvalidInput(f"unexpected input(s) {extra} for model {self.key!r}")
        if not batching:
            return 1
        if rows < 1 or rows > self.max_batch_size:
            raise InvalidInput(f"batch size {rows} is outside 1..{self.max_batch_size} for model {self.key!r}")
        return rows

    def metadata(self, name: str, versions: list[str]) -> dict[str, Any]:
        """V2 model metadata under a V2 model (pipeline) name."""
        return {
            "name": name,
            "versions": versions,
            "platform": self.runtime.info.platform,
            "inputs": [_tensor_meta(t) for t in self.manifest.inputs],
            "outputs": [_tensor_meta(t) for t in self.manifest.outputs],
        }


@dataclass(frozen=True, slots=True)
class Route:
    """A resolved V2 model name: the pipeline it names and the model version that serves the request."""

    pipeline: PipelineSpec
    model: LoadedModel


def _zeros(spec: TensorSpec, rows: int | None) -> np.ndarray[Any, Any]:
    """A zero-filled input; `rows` sets the batch axis (None: no batch axis), other -1 dims become 1."""
    shape = [rows if i == 0 and rows is not None else (1 if d == -1 else d) for i, d in enumerate(spec.shape)]
    if spec.datatype == "BYTES":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=numpy_dtype(spec.datatype))


class ServingCore:
    """Loaded models and pipelines behind one batcher per accelerator; the one place requests are served."""

    def __init__(
        self, config: AgentConfig, *, observer: BatchObserver | None = None, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self._observer = observer
        self._metrics = metrics
        self._models: dict[str, dict[str, LoadedModel]] = {}
        self._active: dict[str, str] = {}
        self._pipelines: dict[str, PipelineSpec] = {}
        self._batcher: Batcher | None = None
        self._admission: Admission | None = None
        # The one per-pipeline stats sink: telemetry (fleet wiring) reads the same instance.
        self.stats = PipelineStats()
        # Standalone (the cloud-pool mode) never offloads; otherwise pools can be set at runtime.
        self.router: OffloadRouter | None = (
            None if config.standalone else OffloadRouter(config.offload, config.pools, metrics=metrics)
        )
        self.started = False

    @property
    def batcher(self) -> Batcher:
        """The accelerator's batcher (after start)."""
        if self._batcher is None:
            raise Unavailable("the serving core is not started")
        return self._batcher

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self, packages: Sequence[ModelPackage], active: Mapping[str, str]) -> None:
        """Load and warm up every package, then build the pipelines; `active` maps model -> version."""
        sched = self.config.scheduler
        limits = sched.queue_limits
        self._batcher = Batcher(
            "cpu",
            depth=self.config.batching.pipeline_depth,
            observer=self._observer,
            estimates=ServiceTimes(sched.ewma_alpha),
            limits=(limits.safety, limits.standard, limits.best_effort),
            safety_lane=sched.safety_lane,
            safety_max_wait_s=sched.safety_max_wait_ms / 1000.0,
            safety_window_s=sched.safety_window_ms / 1000.0,
        )
        self._admission = Admission(self._batcher, self.router, margin_s=sched.admission_margin_ms / 1000.0)
        if self.router is not None:
            await self.router.start()
        for pkg in packages:
            await self.load(pkg)
        for name, versions in self._models.items():
            self._active[name] = active.get(name) or max(versions, key=version_key)
        self._pipelines = self._build_pipelines()
        self._register_stats()
        self.started = True
        logger.info("serving %s pipeline(s): %s", len(self._pipelines), ", ".join(sorted(self._pipelines)))

    async def load(self, pkg: ModelPackage) -> LoadedModel:
        """Load one package version, register its queue, and warm it up (it is ready only after that)."""
        manifest = pkg.manifest
        override = self.config.batching.models.get(manifest.name)
        max_batch = manifest.max_batch_size
        if override is not None and override.max_batch_size is not None and max_batch > 0:
            max_batch = min(max_batch, override.max_batch_size)
        delay_ms = self.config.batching.max_queue_delay_ms
        if override is not None and override.max_queue_delay_ms is not None:
            delay_ms = override.max_queue_delay_ms
        runtime = create_runtime(pkg.path, manifest, self.config.runtime)
        await runtime.load()
        model = LoadedModel(manifest=manifest, runtime=runtime, max_batch_size=max_batch)
        self.batcher.add_queue(
            model.key, runtime.run, tuple(t.name for t in manifest.inputs), max_batch, delay_ms / 1000.0
        )
        self._models.setdefault(manifest.name, {})[manifest.version] = model
        await self._warm_up(model)
        model.ready = True
        if self.started and self.config.expose_models and manifest.name not in self._pipelines:
            self._active.setdefault(manifest.name, manifest.version)
            self._pipelines[manifest.name] = self._exposed(manifest.name)
        logger.info("model %s ready on %s", model.key, runtime.info.provider)
        return model

    async def _warm_up(self, model: LoadedModel) -> None:
        batching = model.max_batch_size > 0
        for rows in sorted({1, model.max_batch_size}) if batching else [1]:
            inputs = {t.name: _zeros(t, rows if batching else None) for t in model.manifest.inputs}
            await self.batcher.submit(model.key, inputs, rows)

    def activate(self, name: str, version: str) -> None:
        """Route new requests for `name` to a loaded `version`; in-flight ones finish where they are."""
        if version not in self._models.get(name, {}):
            raise NotFound(f"model {name!r} version {version!r} is not loaded")
        self._active[name] = version

    async def unload(self, name: str, version: str) -> None:
        """Stop routing to a version, let its queue drain, and release its runtime; never the active one."""
        if self._active.get(name) == version:
            raise Unavailable(f"model {name!r} version {version!r} is active: activate another one first")
        model = self._models.get(name, {}).pop(version, None)
        if model is None:
            raise NotFound(f"model {name!r} version {version!r} is not loaded")
        model.ready = False
        await self.batcher.remove_queue(model.key)
        await model.runtime.unload()

    async def aclose(self) -> None:
        """Finish queued work, stop the lane, unload every runtime."""
        self.started = False
        if self.router is not None:
            await self.router.aclose()
        if self._batcher is not None:
            await self._batcher.drain()
            await self._batcher.aclose()
        for versions in self._models.values():
            for model in versions.values():
                model.ready = False
                await model.runtime.unload()

    def _depth_of(self, model: str) -> Callable[[], int]:
        prefix = f"{model}:"

        def depth() -> int:
            rows = self.batcher.queue_rows()
            return sum(n for key, n in rows.items() if key.startswith(prefix))

        return depth

    def _build_pipelines(
        self, specs: Sequence[PipelineSpec] | None = None, problems: list[str] | None = None
    ) -> dict[str, PipelineSpec]:
        """Pipelines from `specs` (default: the config's). A spec naming a missing model or version raises
        NotFound, or, when `problems` is given, is skipped and described there."""
        pipelines: dict[str, PipelineSpec] = {}
        if self.config.expose_models:
            for name in self._models:
                pipelines[name] = self._exposed(name)
        for spec in self.config.pipelines if specs is None else specs:
            versions = self._models.get(spec.model)
            problem = None
            if versions is None:
                problem = f"pipeline {spec.name!r}: model {spec.model!r} is not installed"
            elif spec.version is not None and spec.version not in versions:
                problem = f"pipeline {spec.name!r}: model {spec.model!r} has no version {spec.version!r}"
            if problem is not None:
                if problems is None:
                    raise NotFound(problem)
                problems.append(problem)
                continue
            pipelines[spec.name] = spec
        return pipelines

    def _exposed(self, model: str) -> PipelineSpec:
        """The pipeline a model is served under by its own name (expose_models)."""
        return PipelineSpec(name=model, model=model, deadline_ms=self.config.expose_deadline_ms)

    def _register_stats(self) -> None:
        for spec in self._pipelines.values():
            self.stats.register(
                spec.name,
                model=spec.model,
                priority=spec.priority,
                version=spec.version,
                queue_depth=self._depth_of(spec.model),
            )

    def set_pipelines(self, specs: Sequence[PipelineSpec]) -> list[str]:
        """Replace the served pipelines (from the hub's desired state); empty = back to the agent's config.

        Takes effect for the next request routed; in-flight requests finish under the pipeline they were
        routed with. Specs naming a model or version that is not loaded are skipped; their problems are
        returned so the caller can report them.
        """
        problems: list[str] = []
        pipelines = self._build_pipelines(list(specs) if specs else None, problems)
        for name in self._pipelines.keys() - pipelines.keys():
            self.stats.unregister(name)
        self._pipelines = pipelines
        self._register_stats()
        logger.info("pipelines now: %s", ", ".join(sorted(pipelines)))
        return problems

    # --- queries ---------------------------------------------------------------------------------

    def pipelines(self) -> dict[str, PipelineSpec]:
        """Pipelines by V2 model name."""
        return dict(self._pipelines)

    def models(self) -> dict[str, dict[str, LoadedModel]]:
        """Loaded models: name -> version -> model."""
        return {name: dict(versions) for name, versions in self._models.items()}

    def active_version(self, name: str) -> str | None:
        """The version new requests for model `name` go to."""
        return self._active.get(name)

    def route(self, name: str, version: str | None = None) -> Route:
        """Resolve a V2 model name (and optional version) to its pipeline and model; NotFound otherwise."""
        spec = self._pipelines.get(name)
        if spec is None:
            raise NotFound(f"unknown model {name!r}")
        versions = self._models.get(spec.model, {})
        if version is None or version == "":
            version = spec.version or self._active.get(spec.model)
        elif spec.version is not None and version != spec.version:
            raise NotFound(f"model {name!r} serves only version {spec.version!r}, not {version!r}")
        model = versions.get(version) if version is not None else None
        if model is None:
            raise NotFound(f"model {name!r} has no version {version!r}")
        return Route(spec, model)

    def shed(self, route: Route) -> None:
        """Pre-admission before the body is read: Rejected (503) if the request cannot run locally in time
        and no pool can take it, whatever its body says; counted as rejected like any other refusal."""
        admission = self._admission
        if admission is None or not route.model.ready:
            return  # the full path reports these
        pipeline = route.pipeline
        rejected = admission.shed(pipeline, route.model.key, self.batcher.now() + pipeline.deadline_ms / 1000.0)
        if rejected is None:
            return
        self.stats.record(pipeline.name, "rejected", 0.0, False)
        if self._metrics is not None:
            self._metrics.observe_route(pipeline.name, "rejected")
        raise rejected

    def versions(self, route: Route) -> list[str]:
        """Versions a V2 model name can be called with."""
        if route.pipeline.version is not None:
            return [route.pipeline.version]
        return sorted(self._models.get(route.pipeline.model, {}), key=version_key)

    def model_metadata(self, route: Route) -> dict[str, Any]:
        """V2 model metadata of a route."""
        return route.model.metadata(route.pipeline.name, self.versions(route))

    def server_metadata(self) -> dict[str, Any]:
        """V2 server metadata."""
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def ready(self) -> bool:
        """True once started and every version that serves requests is warmed up.

        A version being prepared by a rollout (loaded, not yet active) does not make the server unready:
        the active version keeps serving while the new one warms up.
        """
        if not self.started:
            return False
        for name, versions in self._models.items():
            active = self._active.get(name)
            model = versions.get(active) if active is not None else None
            if model is None or not model.ready:
                return False
        return True

    # --- inference -------------------------------------------------------------------------------

    async def infer(
        self,
        route: Route,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        requested: Sequence[str] | None = None,
        *,
        priority: int = 0,
        timeout_us: int | None = None,
    ) -> Tensors:
        """Serve one request; returns the requested outputs (see `infer_routed`)."""
        served = await self.infer_routed(route, inputs, requested, priority=priority, timeout_us=timeout_us)
        return served.outputs

    async def infer_routed(
        self,
        route: Route,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        requested: Sequence[str] | None = None,
        *,
        priority: int = 0,
        timeout_us: int | None = None,
    ) -> Served:
        """Validate and serve one request locally or on a cloud pool; returns the outputs and where it ran.

        `priority` is Triton's request level (0 = default, 1 = highest; it may lower the pipeline's class,
        never raise it) and `timeout_us` its timeout (shortens the pipeline's deadline).
        """
        pipeline = route.pipeline
        start = self.batcher.now()
        where: StatsRoute = "rejected"
        ok = False
        try:
            model = route.model
            if not model.ready:
                raise Unavailable(f"model {model.key!r} is not ready")
            rows = model.validate(inputs)
            if requested is not None:
                unknown = [n for n in requested if n not in model.output_names]
                if unknown:
                    raise InvalidInput(f"unknown output(s) {unknown} for model {pipeline.name!r}")
            admission = self._admission
            if admission is None:
                raise Unavailable("the serving core is not started")
            served = await admission.run(
                pipeline,
                model.key,
                model.version,
                inputs,
                rows,
                requested=requested,
                rank=effective_rank(pipeline.priority, priority),
                deadline=start + budget_s(pipeline.deadline_ms, timeout_us),
            )
            where, ok = served.route, True
        except Expired:
            where = "expired"
            raise
        except InferenceFailed:
            where = "local"
            raise
        finally:
            self.stats.record(pipeline.name, where, self.batcher.now() - start, ok)
            if self._metrics is not None:
                self._metrics.observe_route(pipeline.name, where)
        if requested is None or served.route == "cloud":
            return served
        return Served({n: served.outputs[n] for n in requested}, served.route, served.pool)
