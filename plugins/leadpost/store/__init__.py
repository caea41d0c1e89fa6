"""The lead store: schema, engine, import and synthetic leads."""

from __future__ import annotations

from leadpost.store.engine import STORE_CONN_ID, get_engine, init_db, store_url, utcnow
from leadpost.store.schema import actions, deliveries, lead_tags, leads, metadata, scan_floors

__all__ = [
    "STORE_CONN_ID",
    "actions",
    "deliveries",
    "get_engine",
    "init_db",
    "lead_tags",
    "leads",
    "metadata",
    "scan_floors",
    "store_url",
    "utcnow",
]
