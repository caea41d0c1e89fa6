"""Where an action's leads stand: counts per state, dead letters, recent attempts, replay."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from leadpost.ledger.floors import action_floor
from leadpost.ledger.selection import Selection, catch_up_ids, pending_select
from leadpost.states import DeliveryState
from leadpost.store import deliveries, utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = [
    "Counts",
    "DeadLetter",
    "count_deliveries",
    "list_dead_letters",
    "list_recent_attempts",
    "replay_dead_letters",
]


@dataclass(frozen=True)
class Counts:
    """Where an action's leads stand. ``pending`` counts matching leads not yet owned by any state."""

    pending: int = 0
    in_flight: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count_deliveries(engine: Engine, sel: Selection, *, now: datetime | None = None) -> Counts:
    """Counts per state for one action: ledger states, and pending leads (counted below and
    above the action's scan floor when its shards have one, so the count costs what is new)."""
    now = now or utcnow()
    d = deliveries.c
    with engine.connect() as conn:
        by_state = dict(
            conn.execute(
                sa.select(d.state, sa.func.count()).where(d.action_key == sel.action_key).group_by(d.state)
            ).all()
        )
        floor = action_floor(conn, sel, now=now)
        pending = _count_pending(conn, sel, now=now, after_id=floor.lead_id if floor else 0)
        if floor is not None:
            below = list(conn.execute(catch_up_ids(sel, floor, shard=None, after_id=0, limit=None)).scalars())
            if below:
                pending += _count_pending(conn, sel, now=now, after_id=0, lead_ids=below)
    return Counts(
        pending=pending,
        in_flight=by_state.get(DeliveryState.IN_FLIGHT, 0),
        delivered=by_state.get(DeliveryState.DELIVERED, 0),
        retrying=by_state.get(DeliveryState.RETRYING, 0),
        dead=by_state.get(DeliveryState.DEAD, 0),
    )


def _count_pending(
    conn: sa.Connection, sel: Selection, *, now: datetime, after_id: int, lead_ids: list[int] | None = None
) -> int:
    query = pending_select(
        sel,
        conn.dialect.name,
        now=now,
        shard=None,
        after_id=after_id,
        limit=None,
        claimable_now=False,
        lead_ids=lead_ids,
    )
    return conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()


@dataclass(frozen=True)
class DeadLetter:
    lead_id: int
    last_status: int | None
    last_error: str | None
    attempts: int
    at: datetime


def list_dead_letters(engine: Engine, action_key: str, *, limit: int = 100) -> list[DeadLetter]:
    d = deliveries.c
    query = (
        sa.select(d.lead_id, d.last_status, d.last_error, d.attempts, d.updated_at)
        .where(d.action_key == action_key, d.state == DeliveryState.DEAD)
        .order_by(d.updated_at.desc(), d.lead_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [DeadLetter(*row) for row in conn.execute(query)]


def list_recent_attempts(engine: Engine, action_key: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """Latest ledger movements of an action (lead id, state, status code, short error, when)."""
    d = deliveries.c
    query = (
        sa.select(d.lead_id, d.state, d.last_status, d.last_error, d.attempts, d.updated_at)
        .where(d.action_key == action_key, d.state != DeliveryState.IN_FLIGHT)
        .order_by(d.updated_at.desc(), d.lead_id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def replay_dead_letters(
    engine: Engine, action_key: str, *, status: int | None = None, lead_id: int | None = None
) -> int:
    """Put dead letters back to pending (attempts reset). :return: how many."""
    d = deliveries.c
    stmt = (
        deliveries.update()
        .where(d.action_key == action_key, d.state == DeliveryState.DEAD)
        .values(state=DeliveryState.PENDING, attempts=0, next_attempt_at=None, updated_at=utcnow())
    )
    if status is not None:
        stmt = stmt.where(d.last_status == status)
    if lead_id is not None:
        stmt = stmt.where(d.lead_id == lead_id)
    with engine.begin() as conn:
        return conn.execute(stmt).rowcount


# --- action status ----------------------------------------------------------------------------
