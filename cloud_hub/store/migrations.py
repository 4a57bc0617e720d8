"""Schema migrations: an ordered list of versioned steps, applied at start in one locked transaction.

Each step is a function of a sync `Connection` and must be written once and never edited: a later change
to the schema is a new step (ALTER TABLE ... through `conn.exec_driver_sql` or SQLAlchemy DDL), plus the
matching change in schema.py. Step 1 creates the first tables from schema.py as they were at version 1;
when schema.py changes, give step 1 a frozen copy of the old definitions first.

Concurrency: several hub replicas may start at once. On PostgreSQL the transaction takes an advisory
lock first and DDL is transactional, so exactly one replica migrates and the others see the result. On
SQLite every transaction starts with BEGIN IMMEDIATE (see engine.py), which holds the write lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, inspect, select

from cloud_hub.errors import StoreError
from cloud_hub.store import schema

# pg_advisory_xact_lock key: an arbitrary constant that names "edgefleet hub schema migration".
_PG_LOCK_KEY = 0x6564676566  # "edgef"


@dataclass(frozen=True)
class Migration:
    """One schema step."""

    version: int
    name: str
    apply: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    tables = [schema.devices, schema.claims, schema.telemetry, schema.api_tokens]
    schema.metadata.create_all(conn, tables=tables)


def _v2_rollouts(conn: Connection) -> None:
    tables = [schema.models, schema.device_desired, schema.rollouts, schema.rollout_devices, schema.leases]
    schema.metadata.create_all(conn, tables=tables)


def _v3_reprovisioning(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.retired_certs, schema.reprovision_approvals])


def _add_columns(conn: Connection, table: str, columns: tuple[str, ...]) -> None:
    """ALTER TABLE ... ADD COLUMN for those missing: step 2 creates its tables from schema.py as it is now,
    so on a new database they already have the columns (the result is the same either way)."""
    have = {c["name"] for c in inspect(conn).get_columns(table)}
    for name in columns:
        if name not in have:
            column = schema.metadata.tables[table].c[name]
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {column.type.compile(dialect=conn.dialect)}")


def _v4_rollout_steps(conn: Connection) -> None:
    _add_columns(conn, "rollouts", ("stage",))
    _add_columns(conn, "device_desired", ("trials",))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema: devices, claims, telemetry, api_tokens", _v1_initial),
    Migration(2, "model registry, device desired state, rollouts, leases", _v2_rollouts),
    Migration(3, "retired certificates (CRL) and re-provisioning approvals", _v3_reprovisioning),
    Migration(4, "rollout steps (rollouts.stage) and desired trials (device_desired.trials)", _v4_rollout_steps),
)

LATEST = MIGRATIONS[-1].version


def migrate_sync(conn: Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply the steps the database lacks, inside the caller's transaction; return the versions applied."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
    schema.schema_version.create(conn, checkfirst=True)
    current = conn.execute(select(func.max(schema.schema_version.c.version))).scalar() or 0
    known = migrations[-1].version if migrations else 0
    if current > known:
        raise StoreError(f"database schema is version {current}, newer than this hub knows ({known}): upgrade the hub")
    applied = []
    for step in migrations:
        if step.version <= current:
            continue
        step.apply(conn)
        conn.execute(insert(schema.schema_version).values(version=step.version, name=step.name, applied_at=time.time()))
        applied.append(step.version)
    return applied


def versions_sync(conn: Connection) -> list[int]:
    """Versions recorded in schema_version, ascending."""
    return list(
        conn.execute(select(schema.schema_version.c.version).order_by(schema.schema_version.c.version)).scalars()
    )
