"""Fleet-wide read queries for operator views (the dashboard's overview): counts, one page of devices, load
per pipeline, the labels in use. Filtering and aggregation run in the database, so a page costs the same at
5,000 devices as at 50 (bench/dashboard.py); the JSON functions differ between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pydantic_core
from sqlalchemy import ColumnElement, Float, Text, cast, func, literal, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.store import schema
from cloud_hub.store.devices import ACTIVE, REVOKED
from cloud_hub.store.records import DeviceRecord

_d = schema.devices.c
State = Literal["all", "online", "offline", "revoked"]
STATES: tuple[State, ...] = ("all", "online", "offline", "revoked")
# Route and error counters of a pipeline summary (cloud_hub/store/summary.py), summed over devices.
COUNTERS = ("local", "cloud", "rejected", "expired", "errors")


@dataclass(frozen=True, slots=True)
class FleetFilter:
    """Which devices a view shows: every label pair must match; `state` and an id prefix narrow further."""

    labels: tuple[tuple[str, str], ...] = ()
    state: State = "all"
    id_prefix: str = ""


@dataclass(frozen=True, slots=True)
class Counts:
    """Devices by registry status and link state."""

    online: int = 0
    offline: int = 0
    revoked: int = 0

    @property
    def total(self) -> int:
        """Every device the filter matched."""
        return self.online + self.offline + self.revoked

    def of(self, state: State) -> int:
        """Devices in `state` ("all" for every one)."""
        return self.total if state == "all" else int(getattr(self, state))


@dataclass(frozen=True, slots=True)
class PipelineTotal:
    """One pipeline and model version summed over the online devices' latest reports."""

    pipeline: str
    model: str | None
    version: str | None
    devices: int
    rps: float
    p99_ms_max: float | None
    local: int
    cloud: int
    rejected: int
    expired: int
    errors: int


def _labels_and_prefix(f: FleetFilter) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = [_d.labels[key].as_string() == value for key, value in f.labels]
    if f.id_prefix:
        conds.append(_d.id.startswith(f.id_prefix, autoescape=True))
    return conds


def _state(state: State) -> list[ColumnElement[bool]]:
    if state == "online":
        return [_d.status == ACTIVE, _d.online.is_(True)]
    if state == "offline":
        return [_d.status == ACTIVE, _d.online.is_(False)]
    if state == "revoked":
        return [_d.status == REVOKED]
    return []


async def counts(conn: AsyncConnection, f: FleetFilter) -> Counts:
    """Online, offline and revoked devices among those matching the filter's labels and id prefix."""
    query = select(_d.status, _d.online, func.count()).where(*_labels_and_prefix(f)).group_by(_d.status, _d.online)
    found = {"online": 0, "offline": 0, "revoked": 0}
    for status, online, n in await conn.execute(query):
        key = "revoked" if status == REVOKED else "online" if online else "offline"
        found[key] += int(n)
    return Counts(**found)


async def page(conn: AsyncConnection, f: FleetFilter, *, offset: int, limit: int) -> list[DeviceRecord]:
    """Devices matching the filter, ordered by id, `limit` of them from `offset`."""
    query = (
        select(schema.devices)
        .where(*_labels_and_prefix(f), *_state(f.state))
        .order_by(_d.id)
        .offset(offset)
        .limit(limit)
    )
    return [DeviceRecord.from_row(r) for r in (await conn.execute(query)).mappings()]


async def pipeline_totals(conn: AsyncConnection, f: FleetFilter) -> list[PipelineTotal]:
    """Load per (pipeline, model, version) over the matching devices that are online and active.

    PostgreSQL sums in the server (jsonb_each); SQLite's json_each + json_extract re-parses each pipeline's
    JSON once per figure, about 4x slower there than reading one column and summing here (bench/dashboard.py).
    """
    if conn.dialect.name == "postgresql":
        return await _totals_in_sql(conn, f)
    return await _totals_in_python(conn, f)


async def _totals_in_sql(conn: AsyncConnection, f: FleetFilter) -> list[PipelineTotal]:
    each = func.jsonb_each(_d.last_load["pipelines"]).table_valued("key", "value")

    def field(name: str) -> Any:
        return each.c.value.op("->>")(literal(name))

    def number(name: str) -> Any:
        return cast(field(name), Float)

    model, version = field("model"), field("version")
    query = (
        select(
            each.c.key,
            model,
            version,
            func.count(),
            func.sum(number("rps")),
            func.max(number("p99_ms")),
            *(func.sum(number(c)) for c in COUNTERS),
        )
        .select_from(schema.devices.join(each, true()))
        .where(*_labels_and_prefix(f), *_state("online"))
        .group_by(each.c.key, model, version)
        .order_by(each.c.key, version, model)
    )
    return [
        PipelineTotal(
            pipeline=str(key),
            model=None if mod is None else str(mod),
            version=None if ver is None else str(ver),
            devices=int(n),
            rps=float(rps or 0.0),
            p99_ms_max=None if p99 is None else float(p99),
            **{c: int(s or 0) for c, s in zip(COUNTERS, sums, strict=True)},
        )
        for key, mod, ver, n, rps, p99, *sums in await conn.execute(query)
    ]


async def _totals_in_python(conn: AsyncConnection, f: FleetFilter) -> list[PipelineTotal]:
    query = select(cast(_d.last_load, Text)).where(*_labels_and_prefix(f), *_state("online"), _d.last_load.is_not(None))
    sums: dict[tuple[str, str | None, str | None], list[float]] = {}
    worst: dict[tuple[str, str | None, str | None], float] = {}
    for (text,) in await conn.execute(query):
        load = pydantic_core.from_json(text) if text else None
        if not isinstance(load, dict):  # SQL NULL, or JSON null (how SQLAlchemy stores None in a JSON column)
            continue
        for name, p in (load.get("pipelines") or {}).items():
            key = (name, p.get("model"), p.get("version"))
            acc = sums.setdefault(key, [0.0] * (2 + len(COUNTERS)))
            acc[0] += 1
            acc[1] += p.get("rps") or 0.0
            for i, counter in enumerate(COUNTERS, start=2):
                acc[i] += p.get(counter) or 0
            if p.get("p99_ms") is not None:
                worst[key] = max(worst.get(key, 0.0), float(p["p99_ms"]))
    return [
        PipelineTotal(
            pipeline=key[0],
            model=key[1],
            version=key[2],
            devices=int(acc[0]),
            rps=acc[1],
            p99_ms_max=worst.get(key),
            **{c: int(acc[i]) for i, c in enumerate(COUNTERS, start=2)},
        )
        for key, acc in sorted(sums.items(), key=lambda kv: (kv[0][0], kv[0][2] or "", kv[0][1] or ""))
    ]


async def label_pairs(conn: AsyncConnection, limit: int = 500) -> list[tuple[str, str]]:
    """Distinct (key, value) label pairs in use, sorted (at most `limit`): the choices of a label filter.

    From the distinct label sets (a fleet has few: sites x roles), not from every device's labels."""
    pairs: set[tuple[str, str]] = set()
    for (text,) in await conn.execute(select(cast(_d.labels, Text)).distinct()):
        pairs.update((str(k), str(v)) for k, v in pydantic_core.from_json(text).items())
    return sorted(pairs)[:limit]


def parse_labels(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """`key=value` strings as sorted pairs (the later of two equal keys wins); ValueError on a bare word."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label filter {item!r} must be key=value")
        pairs[key.strip()] = value.strip()
    return tuple(sorted(pairs.items()))
