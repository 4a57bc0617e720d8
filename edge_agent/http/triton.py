"""Triton's HTTP extensions that tools and example clients call: model configuration, statistics, logging,
classification, and clean refusals of shared memory and tracing (see docs/triton-compat.md)."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import numpy as np
from aiohttp import web

from edge_agent.errors import InvalidInput, NotFound, Unavailable
from edge_agent.http.keys import CORE_KEY, METRICS_KEY
from edge_agent.serving.core import Target
from edge_agent.serving.registry import LoadedModel
from models.zoo import LABELS_FILE
from protocols.binary import RequestedOutput

__all__ = ["classify", "model_config_of", "routes"]

_JSON = "application/json"
_BATCH_STAGES = ("compute_input", "compute_infer", "compute_output")
_REQUEST_STAGES = ("success", "fail", "queue", *_BATCH_STAGES, "cache_hit", "cache_miss")
_LOGGER = logging.getLogger("edge_agent")  # the agent's own loggers, which /v2/logging sets
_LOG_KEYS = frozenset({"log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format"})


def _json(obj: object, status: int = 200) -> web.Response:
    body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    return web.Response(status=status, body=body, content_type=_JSON)


def _triton_type(datatype: str) -> str:
    """Triton's model-config data type of a V2 datatype (BYTES is TYPE_STRING there)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _format(shape: tuple[int, ...], batching: bool) -> str:
    """FORMAT_NCHW for a [C,H,W] input with 1 or 3 channels (what image clients check), else FORMAT_NONE."""
    dims = shape[1:] if batching else shape
    return "FORMAT_NCHW" if len(dims) == 3 and dims[0] in (1, 3) and min(dims[1:]) > 3 else "FORMAT_NONE"


def model_config_of(target: Target, delay_ms: float) -> dict[str, Any]:
    """Triton's model configuration JSON (GET v2/models/{m}/config) of a resolved V2 name."""
    model: LoadedModel = target.model
    batching = model.max_batch_size > 0
    info = model.runtime.info

    def dims(shape: tuple[int, ...]) -> list[int]:
        return list(shape[1:] if batching else shape)

    return {
        "name": target.pipeline.name,
        "platform": info.platform,
        "backend": info.backend,
        "version_policy": {"specific": {"versions": [model.version]}},
        "max_batch_size": model.max_batch_size,
        "input": [
            {
                "name": t.name,
                "data_type": _triton_type(t.datatype),
                "format": _format(t.shape, batching),
                "dims": dims(t.shape),
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
            for t in model.manifest.inputs
        ],
        "output": [
            {
                "name": t.name,
                "data_type": _triton_type(t.datatype),
                "dims": dims(t.shape),
                "label_filename": LABELS_FILE if model.labels else "",
                "is_shape_tensor": False,
            }
            for t in model.manifest.outputs
        ],
        "dynamic_batching": (
            {"max_queue_delay_microseconds": round(delay_ms * 1000), "preserve_ordering": False} if batching else None
        ),
        "instance_group": [{"name": f"{model.name}_0", "kind": "KIND_AUTO", "count": 1}],
        "default_model_filename": model.manifest.model_file,
        "parameters": {"edgefleet_priority": {"string_value": target.pipeline.priority}},
    }


async def model_config(request: web.Request) -> web.Response:
    """GET v2/models/{model}[/versions/{version}]/config."""
    core = request.app[CORE_KEY]
    target = core.resolve(request.match_info["model"], request.match_info.get("version"))
    batching = core.config.batching
    override = batching.models.get(target.model.name)
    delay_ms = batching.max_queue_delay_ms
    if override is not None and override.max_queue_delay_ms is not None:
        delay_ms = override.max_queue_delay_ms
    config = model_config_of(target, delay_ms)
    if config["dynamic_batching"] is None:
        del config["dynamic_batching"]
    return _json(config)


def _duration(count: float, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": int(seconds * 1e9)}


def _model_stats(request: web.Request, name: str, target: Target) -> dict[str, Any]:
    metrics = request.app[METRICS_KEY]
    key = target.model.label
    batches = metrics.batch_totals.get(key, {})
    ok, ok_s, failed, failed_s, last = metrics.request_totals.get(name, [0, 0.0, 0, 0.0, 0.0])
    executions = sum(c for c, _ in batches.values())
    infer_s = sum(s for _, s in batches.values())
    stats = {stage: _duration(0, 0.0) for stage in _REQUEST_STAGES}
    stats["success"], stats["fail"] = _duration(ok, ok_s), _duration(failed, failed_s)
    stats["compute_infer"] = _duration(executions, infer_s)
    return {
        "name": name,
        "version": target.model.version,
        "last_inference": int(last * 1000),
        "inference_count": int(sum(size * c for size, (c, _) in batches.items())),
        "execution_count": int(executions),
        "inference_stats": stats,
        "batch_stats": [
            {
                "batch_size": size,
                **{stage: _duration(0, 0.0) for stage in _BATCH_STAGES},
                "compute_infer": _duration(c, s),
            }
            for size, (c, s) in sorted(batches.items())
        ],
        "memory_usage": [],
    }


async def model_stats(request: web.Request) -> web.Response:
    """GET v2/models[/{model}[/versions/{version}]]/stats: Triton's statistics extension."""
    core = request.app[CORE_KEY]
    name = request.match_info.get("model")
    names = [name] if name is not None else sorted(core.pipelines())
    found = []
    for each in names:
        if name is not None:
            found.append(_model_stats(request, each, core.resolve(each, request.match_info.get("version"))))
            continue
        with contextlib.suppress(NotFound, Unavailable):  # an unloaded model: left out of the listing
            found.append(_model_stats(request, each, core.resolve(each)))
    return _json({"model_stats": found})


def _log_settings() -> dict[str, Any]:
    level = _LOGGER.getEffectiveLevel()
    return {
        "log_file": "",
        "log_info": level <= logging.INFO,
        "log_warning": level <= logging.WARNING,
        "log_error": level <= logging.ERROR,
        "log_verbose_level": 1 if level <= logging.DEBUG else 0,
        "log_format": "default",
    }


async def log_settings(request: web.Request) -> web.Response:
    """GET/POST v2/logging: Triton's logging extension over the agent's Python loggers."""
    if request.method == "POST":
        try:
            body = await request.json()
        except ValueError:
            raise InvalidInput("logging settings must be a JSON object") from None
        if type(body) is not dict:
            raise InvalidInput("logging settings must be a JSON object")
        unknown = sorted(set(body) - _LOG_KEYS)
        if unknown:
            raise InvalidInput(f"unknown logging setting(s) {unknown}")
        _apply_log_settings({**_log_settings(), **body})
    return _json(_log_settings())


def _apply_log_settings(settings: dict[str, Any]) -> None:
    if settings["log_file"] != "":
        raise InvalidInput("log_file cannot be set: the agent logs to stderr (journald, the container log)")
    if settings["log_format"] != "default":
        raise InvalidInput("log_format: only 'default' is supported")
    verbose = settings["log_verbose_level"]
    if type(verbose) is not int or verbose < 0:
        raise InvalidInput("log_verbose_level must be a non-negative integer")
    for key in ("log_info", "log_warning", "log_error"):
        if type(settings[key]) is not bool:
            raise InvalidInput(f"{key} must be a boolean")
    level = logging.CRITICAL
    for key, value in (("log_error", logging.ERROR), ("log_warning", logging.WARNING), ("log_info", logging.INFO)):
        if settings[key]:
            level = value
    _LOGGER.setLevel(logging.DEBUG if verbose > 0 else level)


def classify(
    outputs: dict[str, np.ndarray[Any, Any]], wanted: list[RequestedOutput] | None, model: LoadedModel
) -> dict[str, np.ndarray[Any, Any]]:
    """Triton's classification extension: an output asked for with `classification: k` comes back as BYTES
    "score:index[:label]" for its k highest scores (per batch row when the model batches); labels come from
    the package's labels.txt when it has one entry per class."""
    if not wanted:
        return outputs
    batching, labels = model.max_batch_size > 0, model.labels
    for output in wanted:
        k = output.parameters.get("classification")
        if k is None:
            continue
        if type(k) is not int or k < 1:
            raise InvalidInput(f"output {output.name!r}: 'classification' must be a positive integer")
        array = outputs[output.name]
        if array.dtype.kind not in "biuf":
            raise InvalidInput(f"output {output.name!r}: classification needs a numeric output")
        rows = array.reshape(array.shape[0], -1) if batching and array.ndim > 0 else array.reshape(1, -1)
        k = min(k, rows.shape[1])
        order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
        names = labels if len(labels) == rows.shape[1] else None

        def entry(score: float, index: int, names: tuple[str, ...] | None = names) -> bytes:
            return (f"{score:f}:{index}" if names is None else f"{score:f}:{index}:{names[index]}").encode()

        scored = [[entry(float(row[i]), int(i)) for i in top] for row, top in zip(rows, order, strict=True)]
        result = np.empty((len(scored), k), dtype=object)
        result[:] = scored
        outputs[output.name] = result if batching else result.reshape(k)
    return outputs


async def _unsupported(request: web.Request) -> web.Response:
    """Shared memory and tracing: refused with Triton-like texts (400), as a server without them would."""
    path = request.path
    if "sharedmemory" in path:
        raise InvalidInput("shared memory is not supported: send tensors in the body (JSON or binary data)")
    raise InvalidInput("trace setting is not supported")


def routes() -> list[web.RouteDef]:
    """Triton extension routes (registered by http/app.py)."""
    model = "/v2/models/{model}"
    version = "/v2/models/{model}/versions/{version}"
    memory = ("systemsharedmemory", "cudasharedmemory")
    return [
        web.get(f"{model}/config", model_config),
        web.get(f"{version}/config", model_config),
        web.get("/v2/models/stats", model_stats),
        web.get(f"{model}/stats", model_stats),
        web.get(f"{version}/stats", model_stats),
        web.get("/v2/logging", log_settings),
        web.post("/v2/logging", log_settings),
        *[web.route("*", f"/v2/{kind}{{tail:(/.*)?}}", _unsupported) for kind in memory],
        web.route("*", "/v2/trace/setting", _unsupported),
        web.route("*", f"{model}/trace/setting", _unsupported),
    ]
