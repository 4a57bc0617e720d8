"""The current database schema (SQLAlchemy Core). Change it only together with a new step in migrations.py."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite only autoincrements an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("applied_at", Float, nullable=False),
)

# Times are Unix seconds (float) on both databases: no time-zone handling differs between them.
devices = Table(
    "devices",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("labels", Json, nullable=False),
    Column("hardware", Json, nullable=True),
    Column("claim_id", String(32), nullable=False),
    Column("cert_serial", String(40), nullable=False),
    Column("cert_fingerprint", String(64), nullable=False),
    Column("cert_not_after", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("online", Boolean, nullable=False),
    Column("last_seen", Float, nullable=True),
    Column("boot_id", String(64), nullable=True),
    Column("last_seq", BigInteger, nullable=True),
    Column("last_load", Json, nullable=True),
    Column("models", Json, nullable=True),
    Column("agent_version", String(64), nullable=True),
    Column("reported", Json, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("provisioned_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

claims = Table(
    "claims",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("labels", Json, nullable=False),
    Column("uses_total", Integer, nullable=False),
    Column("uses_left", Integer, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

telemetry = Table(
    "telemetry",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("device_id", String(128), nullable=False),
    Column("boot_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("sent_at", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("pipelines", Json, nullable=False),
    UniqueConstraint("device_id", "boot_id", "seq", name="uq_telemetry_device_boot_seq"),
    Index("ix_telemetry_device_received", "device_id", "received_at"),
    Index("ix_telemetry_received", "received_at"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

# --- issue 6: model registry, desired state, rollouts (migration step 2) ---------------------------

# One row per pushed (name, version): the stored tar is the package re-signed by the hub.
models = Table(
    "models",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("sha256", String(64), nullable=False),  # of the stored .tar: its content address and ETag
    Column("package_sha256", String(64), nullable=False),  # of the canonical manifest: what "same package" means
    Column("size", BigInteger, nullable=False),
    Column("manifest", Json, nullable=False),
    Column("signature", Json, nullable=False),  # the hub's signature (also manifest.sig.json in the tar)
    Column("publisher_key_id", String(16), nullable=True),  # who signed the upload; None if unsigned
    Column("pushed_at", Float, nullable=False),
    Index("ix_models_sha256", "sha256"),
)

# The desired state of each device: every model it should run, and its revision (only grows).
device_desired = Table(
    "device_desired",
    metadata,
    Column("device_id", String(128), primary_key=True),
    Column("revision", BigInteger, nullable=False),
    Column("models", Json, nullable=False),
    Column("apply", Json, nullable=False),
    Column("rollout_id", String(64), nullable=True),
    Column("issued_at", Float, nullable=False),
    Column("unpublished", Boolean, nullable=False),  # committed but not yet acknowledged by the broker
    Column("trials", Json, nullable=True),  # issue 16 (migration 4): DesiredTrial list; None = none
    Index("ix_device_desired_unpublished", "unpublished"),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("model", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("spec", Json, nullable=False),
    Column("state", String(32), nullable=False),
    Column("wave", Integer, nullable=False),
    Column("phase", String(16), nullable=False),
    Column("phase_since", Float, nullable=True),
    Column("reason", String(2000), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("stage", String(16), nullable=True),  # issue 16 (migration 4): shadow | split | full; None = full
    Index("ix_rollouts_state", "state"),
)

rollout_devices = Table(
    "rollout_devices",
    metadata,
    Column("rollout_id", String(32), primary_key=True),
    Column("device_id", String(128), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("wave", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("revision", BigInteger, nullable=True),  # desired revision the rollout wrote for it
    Column("previous", Json, nullable=True),  # DesiredModel it had before (None: model gets removed on rollback)
    Column("baseline", Json, nullable=True),  # {pipeline: p99_ms} from the last telemetry before the update
    Column("started_at", Float, nullable=True),
    Column("activated_at", Float, nullable=True),
    Column("error", String(2000), nullable=True),
    Column("updated_at", Float, nullable=False),
)

# Leases with expiry: the replica holding "rollouts" drives every rollout.
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Issue 15: certificates replaced by re-provisioning (listed on the CRL) and operator approvals to
# re-provision a device id without proof of its current key.
retired_certs = Table(
    "retired_certs",
    metadata,
    Column("serial", String(64), primary_key=True),
    Column("device_id", String(128), nullable=False),
    Column("retired_at", Float, nullable=False),
)

reprovision_approvals = Table(
    "reprovision_approvals",
    metadata,
    Column("device_id", String(128), primary_key=True),
    Column("approved_until", Float, nullable=False),
)
