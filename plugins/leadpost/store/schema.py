"""SQLAlchemy Core tables of the lead store and of leadpost's own state.

One module holds every table so the schema reads at a glance. ``leads`` and ``lead_tags`` are the
contract (SPEC "The lead store"); ``leadpost_*`` tables are leadpost's own bookkeeping.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

__all__ = [
    "SCAN_CLOCK_MARGIN",
    "UtcDateTime",
    "actions",
    "deliveries",
    "lead_tags",
    "leads",
    "metadata",
    "scan_floors",
]

metadata = sa.MetaData()


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Timestamps are stored in UTC and always come back timezone-aware.

    SQLite keeps no offset, so values are normalised to naive UTC there; comparing them in SQL is
    then a plain, index-friendly text comparison. Naive inputs are taken as UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


leads = sa.Table(
    "leads",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("birth_date", sa.Date),
    sa.Column("phone", sa.Text),
    sa.Column("company", sa.Text),
    sa.Column("city", sa.Text),
    sa.Column("state", sa.Text),
    sa.Column("score", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'active'")),
    sa.Column("funnel", sa.Text),
    sa.Column("captured_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.CheckConstraint("status IN ('active', 'inactive')", name="leads_status_check"),
    sqlite_autoincrement=True,  # never reuse a deleted lead's id: the ledger is keyed by it
)
sa.Index("ix_leads_email", leads.c.email, unique=True)
sa.Index("ix_leads_captured_at", leads.c.captured_at)
# Below a scan floor, walks look only at leads that changed since (see leadpost.ledger.floors).
sa.Index("ix_leads_updated_at", leads.c.updated_at)

lead_tags = sa.Table(
    "lead_tags",
    metadata,
    sa.Column("lead_id", sa.Integer, sa.ForeignKey("leads.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("tag", sa.Text, primary_key=True),
)
# EXISTS (... WHERE tag = :t AND lead_id = leads.id) probes by tag first.
sa.Index("ix_lead_tags_tag_lead", lead_tags.c.tag, lead_tags.c.lead_id)

# One row per configured action: its activation status and the fingerprint it was tested with.
actions = sa.Table(
    "leadpost_actions",
    metadata,
    sa.Column("action_key", sa.Text, primary_key=True),  # "trigger.action"
    sa.Column("status", sa.Text, nullable=False),  # ActionStatus
    sa.Column("status_reason", sa.Text),
    sa.Column("tested_fingerprint", sa.Text),  # fingerprint of the last successful test
    sa.Column("last_test_at", UtcDateTime()),
    sa.Column("last_test_ok", sa.Boolean),
    sa.Column("last_test_status", sa.Integer),
    sa.Column("last_test_message", sa.Text),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# One row per (action, lead): the delivery ledger.
deliveries = sa.Table(
    "leadpost_deliveries",
    metadata,
    sa.Column("action_key", sa.Text, primary_key=True),
    sa.Column("lead_id", sa.Integer, primary_key=True),
    sa.Column("lead_version", UtcDateTime(), nullable=False),  # leads.updated_at sent
    sa.Column("state", sa.Text, nullable=False),  # DeliveryState
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("claim_token", sa.Text),
    sa.Column("claim_expires_at", UtcDateTime()),
    sa.Column("next_attempt_at", UtcDateTime()),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("delivered_at", UtcDateTime()),
)
# Counts per state, and a walk's look at reopened rows below its floor (lead id ranges per state).
sa.Index("ix_deliveries_action_state_lead", deliveries.c.action_key, deliveries.c.state, deliveries.c.lead_id)
sa.Index("ix_deliveries_action_updated", deliveries.c.action_key, deliveries.c.updated_at)

# Lead writes are stamped (updated_at) a moment before they commit, and clocks differ a little: a
# floor's `since` is set this long before its walk began.
SCAN_CLOCK_MARGIN = timedelta(minutes=5)

# Per (action, shard layout, shard): where the next walk for pending leads starts. Every lead at or
# below floor_id that matched the filters had a delivery row as of `since`; see leadpost.ledger.floors.
scan_floors = sa.Table(
    "leadpost_scan_floors",
    metadata,
    sa.Column("action_key", sa.Text, primary_key=True),
    sa.Column("shard_count", sa.Integer, primary_key=True),
    sa.Column("shard_index", sa.Integer, primary_key=True),
    sa.Column("basis", sa.Text, nullable=False),  # fingerprint of what the floor depends on
    sa.Column("floor_id", sa.Integer, nullable=False),
    sa.Column("since", UtcDateTime(), nullable=False),
    sa.Column("full_walk_at", UtcDateTime(), nullable=False),  # the last walk that started at id 0
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)
