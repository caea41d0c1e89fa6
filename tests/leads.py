"""Small helpers to put leads in a store and read the ledger back (tests only)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from leadpost.config import parse_triggers
from leadpost.ledger import Selection
from leadpost.store import deliveries, lead_tags, leads

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)  # a Monday


def add_leads(engine: sa.Engine, n: int, *, start: int = 1, **overrides: Any) -> list[int]:
    """Insert ``n`` active leads with ids start..start+n-1; returns the ids."""
    rows = []
    for i in range(start, start + n):
        row = {
            "id": i,
            "email": f"lead{i}@example.com",
            "name": f"Lead Ñandú {i}",
            "city": "São Paulo",
            "state": "SP",
            "score": i % 100,
            "status": "active",
            "captured_at": T0 + timedelta(minutes=i),
            "updated_at": T0,
        }
        row.update(overrides)
        rows.append(row)
    with engine.begin() as conn:
        conn.execute(leads.insert(), rows)
    return [r["id"] for r in rows]


def tag(engine: sa.Engine, lead_ids: Iterable[int], *tags: str) -> None:
    with engine.begin() as conn:
        conn.execute(lead_tags.insert(), [{"lead_id": i, "tag": t} for i in lead_ids for t in tags])


def ledger_rows(engine: sa.Engine, action_key: str) -> dict[int, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(deliveries).where(deliveries.c.action_key == action_key)).mappings()
        return {r["lead_id"]: dict(r) for r in rows}


def selection(
    url: str, *, trigger: str = "t", action: str = "a", extra: str = "", filters: str = ""
) -> Selection:
    """A one-action trigger posting the lead's email and name to ``url``."""
    text = f"""
triggers:
  - id: {trigger}
    filters: {{{filters}}}
    actions:
      - id: {action}
        url: {url}
        fields: {{email: email, name: nome}}
        {extra}
"""
    parsed = parse_triggers(text)
    t = parsed.triggers[0]
    return Selection(t, t.actions[0], T0.date())
