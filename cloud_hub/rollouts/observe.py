"""Observations for the rollout engine, read from the store (shared by replicas) and the live fleet view."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.fleet.live import LiveFleet
from cloud_hub.rollouts.engine import DeviceObservation
from cloud_hub.rollouts.evidence import Evidence
from cloud_hub.rollouts.model import TOUCHED, Rollout, Stage, TargetDevice, device_stage
from cloud_hub.store import devices, telemetry
from cloud_hub.store.summary import decode_summary
from protocols.messages import ReportedState

BASELINE_WINDOW_S = 3600.0
CHUNK = 500


def _reported(raw: dict[str, Any] | None, live: ReportedState | None) -> ReportedState | None:
    stored = ReportedState.model_validate(raw) if raw else None
    if live is not None and (stored is None or live.revision >= stored.revision):
        return live
    return stored


def model_phase(
    d: TargetDevice, reported: ReportedState | None, model: str, version: str, stage: Stage = "full"
) -> tuple[Any, ...]:
    """(phase, error, progress) of `model` at `version` in a report for the device's revision or later: in a
    shadow or split step, of the trial of that version (active = loaded and applied next to the serving one)."""
    if reported is None or d.revision is None or reported.revision < d.revision:
        return None, None, None
    if stage != "full":
        trial = next((m for m in reported.trials if m.name == model and m.version == version), None)
        return (None, None, None) if trial is None else (trial.state, trial.error, trial.progress)
    for m in reported.models:
        if m.name != model:
            continue
        if m.state == "active" and (m.active_version or m.version) == version:
            return "active", None, m.progress
        if m.version == version:
            return m.state, m.error, m.progress
    return None, None, None


async def observe(
    conn: AsyncConnection, r: Rollout, live: LiveFleet | None, evidence: Evidence | None = None
) -> dict[str, DeviceObservation]:
    """What the engine needs about every touched device."""
    watched = [d for d in r.devices if d.status in TOUCHED]
    if not watched:
        return {}
    rows = await devices.observed(conn, [d.device_id for d in watched], CHUNK)
    spec = r.spec
    gates = spec.max_p99_increase_pct is not None or spec.max_error_rate_pct is not None
    active = {d.device_id: d for d in watched if d.status == "active" and d.activated_at is not None}
    usage: dict[str, tuple[dict[str, list[float]], int, int]] = {}
    if gates and active:
        since = min(d.activated_at or 0.0 for d in active.values())
        for report in await telemetry.received_since(conn, list(active), since, CHUNK):
            d = active[report["device_id"]]
            if report["received_at"] <= (d.activated_at or 0.0):
                continue
            # In a shadow or split step the pipelines report the serving version: all of them count.
            any_version = device_stage(r, d) != "full"
            p99s, requests, errors = usage.setdefault(d.device_id, ({}, 0, 0))
            for name, p in decode_summary(report["pipelines"]).items():
                if p.model != spec.model or (p.version not in (None, spec.version) and not any_version):
                    continue
                if p.p99_ms is not None:
                    p99s.setdefault(name, []).append(p.p99_ms)
                requests += p.requests
                errors += p.errors
            usage[d.device_id] = (p99s, requests, errors)
    found: dict[str, DeviceObservation] = {}
    for d in watched:
        row = rows.get(d.device_id)
        live_dev = live.get(d.device_id) if live is not None else None
        reported = _reported(row["reported"] if row else None, live_dev.reported if live_dev else None)
        online = bool(row["online"]) if row else False
        if live_dev is not None and live_dev.online is not None:
            online = live_dev.online
        stage = device_stage(r, d)
        phase, error, progress = model_phase(d, reported, spec.model, spec.version, stage)
        p99s, requests, errors = usage.get(d.device_id, ({}, 0, 0))
        trial = _trial_evidence(d, spec.model, spec.version, stage, evidence)
        found[d.device_id] = DeviceObservation(
            online=online,
            phase=phase,
            error=error,
            progress=progress,
            p99_ms={k: statistics.median(v) for k, v in p99s.items() if v},
            requests=requests,
            errors=max(errors, 0),
            **trial,
        )
    return found


def _trial_evidence(
    d: TargetDevice, model: str, version: str, stage: Stage, evidence: Evidence | None
) -> dict[str, Any]:
    """Shadow agreement (shadow step) and drift against the replaced version (split, full) since activation."""
    if evidence is None or d.status != "active" or d.activated_at is None or not d.previous:
        return {}
    found: dict[str, Any] = {}
    if stage == "shadow":
        a = evidence.agreement(d.device_id, model, version, d.activated_at)
        found.update(compared=a.compared, agreed=a.agreed, max_abs_diff=a.max_abs_diff)
    previous = str(d.previous.get("version"))
    if previous != version:
        drift = evidence.drift_against(d.device_id, model, version, previous, d.activated_at)
        if drift is not None:
            found.update(drift_psi=drift[0], drift_part=drift[1])
    return found


async def baselines(conn: AsyncConnection, ids: Sequence[str], model: str, now: float) -> dict[str, dict[str, float]]:
    """Per device, {pipeline: p99_ms} of `model` from its last report (within the last hour) before now."""
    latest: dict[str, dict[str, float]] = {}
    for row in await telemetry.received_since(conn, ids, now - BASELINE_WINDOW_S, CHUNK):
        p99s = {
            name: p.p99_ms
            for name, p in decode_summary(row["pipelines"]).items()
            if p.model == model and p.p99_ms is not None
        }
        if p99s:
            latest[row["device_id"]] = p99s  # rows come oldest first: the last one wins
    return latest


async def installed_versions(conn: AsyncConnection, ids: Sequence[str], model: str) -> dict[str, str]:
    """Per device, the active version of `model` it announced in its birth (for devices with no desired entry)."""
    rows = await devices.observed(conn, ids, CHUNK)
    found = {}
    for device_id, row in rows.items():
        for m in row["models"] or []:
            if m.get("name") == model and m.get("active"):
                found[device_id] = str(m["version"])
    return found
