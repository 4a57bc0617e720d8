"""The hub's store: schema, migrations and queries, on SQLite or PostgreSQL (SQLAlchemy 2.x async)."""

from cloud_hub.store.engine import Store, normalize_url
from cloud_hub.store.records import ClaimRecord, DeviceRecord

__all__ = ["ClaimRecord", "DeviceRecord", "Store", "normalize_url"]
