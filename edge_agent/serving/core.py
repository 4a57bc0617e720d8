"""The serving core: pipelines (V2 model names) over the model registry, and inference via the scheduler.

Transports (HTTP now, others later) decode, call `resolve` + `infer`/`serve`, and encode; they hold no model
state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent import __version__
from edge_agent.config import AgentConfig
from edge_agent.errors import InferenceFailed, InvalidInput, NotFound, Unavailable
from edge_agent.metrics import Metrics
from edge_agent.offload.router import OffloadRouter
from edge_agent.scheduler.estimates import ServiceTimes
from edge_agent.scheduler.priority import BatchObserver, PriorityScheduler
from edge_agent.scheduler.queue import Expired, QueueKey
from edge_agent.serving.admission import Admission, Served, answered_by, budget_s, effective_rank
from edge_agent.serving.pipelines import build_pipelines, without_cell_safety
from edge_agent.serving.registry import LoadedModel, ModelRegistry
from edge_agent.serving.shadow import Shadow
from edge_agent.serving.split import VersionSplit
from edge_agent.serving.startup import load_each, zeros
from edge_agent.serving.stats import Outcome, PipelineStats
from edge_agent.store import version_key
from models.package import ModelPackage
from models.runtimes.factory import create_runtime
from protocols.pipeline import PipelineSpec

__all__ = ["ServingCore", "Target"]

logger = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray[Any, Any]]
# Triton's extension names (docs/triton-compat.md); not sequence, shared memory, trace, schedule_policy.
_EXTENSIONS = "binary_tensor_data parameters classification model_configuration model_repository statistics logging"
EXTENSIONS = tuple(_EXTENSIONS.split())


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved V2 model name: the pipeline it names and the model version that serves the request."""

    pipeline: PipelineSpec
    model: LoadedModel


class ServingCore:
    """Loaded models and pipelines behind one scheduler per accelerator; the one place requests are served."""

    def __init__(self, config: AgentConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self._metrics = metrics
        self._observer: BatchObserver | None = None
        if metrics is not None:
            observe_batch = metrics.observe_batch

            def observer(key: QueueKey, rows: int, seconds: float) -> None:
                observe_batch(str(key), rows, seconds)

            self._observer = observer
        self._registry = ModelRegistry()
        self._pipelines: dict[str, PipelineSpec] = {}
        self._split = VersionSplit()  # per-pipeline stable/candidate choice (serving/split.py)
        self._scheduler: PriorityScheduler | None = None
        self._admission: Admission | None = None
        # The one per-pipeline stats sink: fleet telemetry reads the same instance.
        self.stats = PipelineStats()
        self._shadow = Shadow(self.stats, lambda: self._scheduler, self._registry.versions)  # drift, shadow
        # Standalone (the cloud-pool mode) never offloads; otherwise pools can be set at runtime.
        self.router: OffloadRouter | None = None
        if not config.standalone:  # requests sent to pools count in telemetry (per-pool demand)
            self.router = OffloadRouter(config.offload, config.pools, metrics=metrics, on_offer=self.stats.record_offer)
        self.started = False
        # Where safety pipelines are served when they run in a safety cell (set by the app; V2 metadata says it).
        self.safety_cell_url: str | None = None
        # Names of the safety pipelines a safety cell serves (main process only): never served here.
        self.safety_elsewhere: frozenset[str] = frozenset()

    @property
    def scheduler(self) -> PriorityScheduler:
        """The accelerator's scheduler (after start)."""
        if self._scheduler is None:
            raise Unavailable("the serving core is not started")
        return self._scheduler

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self, packages: Sequence[ModelPackage], active: Mapping[str, str]) -> None:
        """Load and warm up every package, then build the pipelines; `active` maps model -> version."""
        sched = self.config.scheduler
        limits = sched.queue_limits
        self._scheduler = PriorityScheduler(
            "cpu",
            depth=self.config.batching.pipeline_depth,
            observer=self._observer,
            estimates=ServiceTimes(sched.ewma_alpha),
            limits=(limits.safety, limits.standard, limits.best_effort),
            safety_lane=sched.safety_lane,
            safety_max_wait_s=sched.safety_max_wait_ms / 1000.0,
            safety_window_s=sched.safety_window_ms / 1000.0,
        )
        self._admission = Admission(self._scheduler, self.router, margin_s=sched.admission_margin_ms / 1000.0)
        if self.router is not None:
            await self.router.start()
        for (name, version), reason in (await load_each(packages, self.load, self.unload)).items():
            self._registry.fail(name, version, reason)  # not ready, reported; the other models serve
        self._registry.activate_defaults(active)
        failed = self._registry.failures()
        self._pipelines = self._build_pipelines([p for p in self.config.pipelines if p.model not in failed])
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
        self.scheduler.add_queue(
            model.key, runtime.run, tuple(t.name for t in manifest.inputs), max_batch, delay_ms / 1000.0
        )
        self._registry.add(model)
        await self._warm_up(model)
        model.ready = True
        if self.started and self.config.expose_models and manifest.name not in self._pipelines:
            self._registry.set_default(manifest.name, manifest.version)
            self._pipelines[manifest.name] = self._exposed(manifest.name)
        logger.info("model %s ready on %s", model.label, runtime.info.provider)
        return model

    async def _warm_up(self, model: LoadedModel) -> None:
        batching = model.max_batch_size > 0
        for rows in sorted({1, model.max_batch_size}) if batching else [1]:
            inputs = {t.name: zeros(t, rows if batching else None) for t in model.manifest.inputs}
            await self.scheduler.submit(model.key, inputs, rows)

    def activate(self, name: str, version: str) -> None:
        """Send new requests for `name` to a loaded `version`; in-flight ones finish where they are."""
        self._registry.activate(name, version)

    async def unload(self, name: str, version: str) -> None:
        """Stop serving a version, let its queue drain, and release its runtime; never the active one."""
        if self._registry.active_version(name) == version:
            raise Unavailable(f"model {name!r} version {version!r} is active: activate another one first")
        model = self._registry.remove(name, version)
        if model is None:
            raise NotFound(f"model {name!r} version {version!r} is not loaded")
        model.ready = False
        await self.scheduler.remove_queue(model.key)
        await model.runtime.unload()

    async def aclose(self) -> None:
        """Finish queued work, stop the lane, unload every runtime."""
        self.started = False
        if self.router is not None:
            await self.router.aclose()
        if self._scheduler is not None:
            await self._scheduler.drain()
            await self._scheduler.aclose()
        for model in self._registry.all():
            model.ready = False
            await model.runtime.unload()

    def _depth_of(self, model: str) -> Callable[[], int]:
        def depth() -> int:
            return sum(n for key, n in self.scheduler.queue_rows().items() if key.model == model)

        return depth

    def _build_pipelines(
        self, specs: Sequence[PipelineSpec] | None = None, problems: list[str] | None = None
    ) -> dict[str, PipelineSpec]:
        """Pipelines from `specs` (default: the config's), see pipelines.build_pipelines."""
        exposed = [self._exposed(name) for name in self._registry.names()] if self.config.expose_models else []
        chosen = self.config.pipelines if specs is None else specs
        return build_pipelines(self._registry, chosen, exposed, problems)

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

        Takes effect for the next request resolved; in-flight requests finish under the pipeline they were
        resolved with. Specs naming a model or version that is not loaded are skipped; their problems are
        returned so the caller can report them.
        """
        problems: list[str] = []
        if self.safety_elsewhere and specs:
            specs = without_cell_safety(specs, self.safety_elsewhere, problems)
        pipelines = self._build_pipelines(list(specs) if specs else None, problems)
        for name in self._pipelines.keys() - pipelines.keys():
            self.stats.unregister(name)
            self._split.forget(name)
            self._shadow.forget(name)
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
        return self._registry.snapshot()

    def failures(self) -> dict[str, dict[str, str]]:
        """Models that failed to load or warm up at start: name -> version -> why (not served, not ready)."""
        return self._registry.failures()

    def active_version(self, name: str) -> str | None:
        """The version new requests for model `name` go to."""
        return self._registry.active_version(name)

    def queue_rows(self) -> dict[QueueKey, int]:
        """Rows waiting per model version (empty before start)."""
        return self.scheduler.queue_rows() if self.started else {}

    def resolve(
        self, name: str, version: str | None = None, *, request_id: str | None = None, route: bool = False
    ) -> Target:
        """Resolve a V2 model name (and optional version) to its pipeline and model; NotFound otherwise.
        `route`: this resolves the request that is served, so a pipeline's version split chooses its version
        (by `request_id` when given, see serving/split.py); a version named in the URL is never split."""
        spec = self._pipelines.get(name)
        if spec is None and not self.started and any(p.name == name for p in self.config.pipelines):
            raise Unavailable(f"model {name!r} is not ready: the agent is loading its models")
        if spec is None:  # Triton's texts (user code matches them); a pipeline over a failed model is 503
            raise self._registry.unknown(next((p.model for p in self.config.pipelines if p.name == name), name))
        versions = self._registry.versions(spec.model)
        if version is None or version == "":
            version = spec.version or self._registry.active_version(spec.model)
            if route and spec.splits:
                version = self._split.choose(spec, request_id, version, versions)
        elif spec.version is not None and version not in (spec.version, spec.candidate_version):
            raise self._registry.unknown(name, version)
        model = versions.get(version) if version is not None else None
        if model is None:
            raise self._registry.unknown(name, version)
        return Target(spec, model)

    def shed(self, target: Target, *, age_s: float = 0.0) -> None:
        """Pre-admission before the body is read: Rejected (503) if the request cannot run locally in time
        and no pool can take it, whatever its body says; counted as rejected like any other refusal.
        `age_s`: how long ago the request's first byte arrived (its deadline counts from then)."""
        admission = self._admission
        if admission is None or not target.model.ready:
            return  # the full path reports these
        pipeline = target.pipeline
        deadline = self.scheduler.now() - age_s + pipeline.deadline_ms / 1000.0
        rejected = admission.shed(pipeline, target.model.key, deadline)
        if rejected is None:
            return
        self._count(pipeline.name, "rejected", 0.0, False)
        raise rejected

    def expired(self, target: Target, age_s: float, why: str) -> Expired:
        """The refusal of a request that ran out of time before it could be queued (e.g. its body came too
        slowly), counted as expired; the caller raises it."""
        self._count(target.pipeline.name, "expired", age_s, False)
        return Expired(f"model {target.pipeline.name!r}: {why}")

    def versions(self, target: Target) -> list[str]:
        """Versions a V2 model name can be called with."""
        if target.pipeline.version is not None:
            return sorted({target.pipeline.version, target.pipeline.candidate_version or target.pipeline.version})
        return sorted(self._registry.versions(target.pipeline.model), key=version_key)

    def model_metadata(self, target: Target) -> dict[str, Any]:
        """V2 model metadata of a resolved name (a safety pipeline's names the safety cell's address)."""
        metadata = target.model.metadata(target.pipeline.name, self.versions(target))
        if self.safety_cell_url is not None and target.pipeline.priority == "safety":
            metadata["parameters"] = {"safety_cell_url": self.safety_cell_url}
        return metadata

    def server_metadata(self) -> dict[str, Any]:
        """V2 server metadata (with `parameters.safety_cell_url` when safety pipelines run in a cell)."""
        metadata: dict[str, Any] = {"name": self.config.server_name, "version": __version__}
        metadata["extensions"] = list(EXTENSIONS)
        if self.safety_cell_url is not None:
            metadata["parameters"] = {"safety_cell_url": self.safety_cell_url}
        return metadata

    def ready(self) -> bool:
        """True once started and every version that serves requests is warmed up.

        A version being prepared by a rollout (loaded, not yet active) does not make the server unready:
        the active version keeps serving while the new one warms up.
        """
        return self.started and self._registry.active_ready()

    # --- inference -------------------------------------------------------------------------------

    def _count(self, pipeline: str, outcome: Outcome, latency_s: float, ok: bool) -> None:
        self.stats.record(pipeline, outcome, latency_s, ok)
        if self._metrics is not None:
            self._metrics.observe_outcome(pipeline, outcome)

    async def infer(
        self,
        target: Target,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        requested: Sequence[str] | None = None,
        *,
        priority: int = 0,
        timeout_us: int | None = None,
    ) -> Tensors:
        """Serve one request; returns the requested outputs (see `serve`)."""
        served = await self.serve(target, inputs, requested, priority=priority, timeout_us=timeout_us)
        return served.outputs

    async def serve(
        self,
        target: Target,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        requested: Sequence[str] | None = None,
        *,
        priority: int = 0,
        timeout_us: int | None = None,
        age_s: float = 0.0,
    ) -> Served:
        """Validate and serve one request locally or on a cloud pool; returns the outputs and where it ran.

        `priority` is Triton's request level (0 = default, 1 = highest; it may lower the pipeline's class,
        never raise it) and `timeout_us` its timeout (shortens the pipeline's deadline); `age_s` how long ago
        its first byte arrived: deadline and latency count from then. A safety answer that would come after
        its deadline is refused (Expired, 503), never returned late.
        """
        pipeline = target.pipeline
        start = self.scheduler.now() - age_s
        deadline = start + budget_s(pipeline.deadline_ms, timeout_us)
        outcome: Outcome = "rejected"
        ok = False
        try:
            model = target.model
            if not model.ready:
                raise Unavailable(f"model {model.label!r} is not ready")
            rows = model.validate(inputs)
            if requested is not None:
                unknown = [n for n in requested if n not in model.output_names]
                if unknown:
                    raise InvalidInput(f"unknown output(s) {unknown} for model {pipeline.name!r}")
            admission = self._admission
            if admission is None:
                raise Unavailable("the serving core is not started")
            call = admission.run(
                pipeline,
                model.key,
                inputs,
                rows,
                requested=requested,
                rank=effective_rank(pipeline.priority, priority),
                deadline=deadline,
            )
            if pipeline.priority == "safety":  # answered by the deadline or refused then, never late
                call = answered_by(call, deadline - self.scheduler.now(), pipeline.name)
            served = await call
            outcome, ok = served.where, True
            self._shadow.answered(pipeline, model, inputs, rows, served)
        except Expired:
            outcome = "expired"
            raise
        except (InferenceFailed, InvalidInput) as exc:  # ran and failed (500), or refused as invalid (400)
            outcome = "local" if isinstance(exc, InferenceFailed) else "invalid"
            raise
        finally:
            self._count(pipeline.name, outcome, self.scheduler.now() - start, ok)
        if requested is None or served.where == "cloud":
            return served
        return Served({n: served.outputs[n] for n in requested}, served.where, served.pool)
