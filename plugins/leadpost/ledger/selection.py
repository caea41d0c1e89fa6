"""What an action is after: Selection (trigger filters for one day), Shard, and the one SELECT
that finds its pending leads, keyset-paged by id (optionally only below a scan Floor)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from leadpost.filters import compile_filters
from leadpost.states import DeliveryState
from leadpost.store import deliveries, leads

if TYPE_CHECKING:
    from collections.abc import Sequence

    from leadpost.config import ActionConfig, TriggerConfig

__all__ = ["LEAD_COLUMNS", "Floor", "Selection", "Shard", "claimable", "pending_select"]

LEAD_COLUMNS = (
    leads.c.id,
    leads.c.email,
    leads.c.name,
    leads.c.birth_date,
    leads.c.phone,
    leads.c.company,
    leads.c.city,
    leads.c.state,
    leads.c.updated_at,
)


@dataclass(frozen=True)
class Shard:
    """One mapped dispatch task's share of an action's leads: ``lead id % count == index``.

    Small and JSON-friendly: this is what travels through XCom.
    """

    action_key: str
    index: int = 0
    count: int = 1

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: dict[str, Any]) -> Shard:
        return cls(**data)


@dataclass(frozen=True)
class Floor:
    """Every lead with ``id <= lead_id`` that matched had a delivery row as of ``since``.

    Below it only two kinds of lead can be pending: leads that changed after ``since`` and leads
    whose delivery row can be claimed again (released, due for a retry, expired claim, replayed).
    """

    lead_id: int
    since: datetime


@dataclass(frozen=True)
class Selection:
    """Which leads an action is after: the trigger's filters, evaluated for one day in one zone."""

    trigger: TriggerConfig
    action: ActionConfig
    today: date

    @property
    def action_key(self) -> str:
        return f"{self.trigger.id}.{self.action.id}"

    def conditions(self, dialect_name: str) -> list[sa.ColumnElement[bool]]:
        return compile_filters(
            self.trigger.filters, timezone=self.trigger.timezone, today=self.today, dialect_name=dialect_name
        )


def claimable(
    row: Any, *, now: datetime, current_version: Any, resend_on_update: bool
) -> sa.ColumnElement[bool]:
    """SQL truth of "this delivery row may be claimed now" (row = the deliveries table or its alias)."""
    clauses = [
        row.c.state == DeliveryState.PENDING,
        sa.and_(row.c.state == DeliveryState.RETRYING, row.c.next_attempt_at <= now),
        sa.and_(row.c.state == DeliveryState.IN_FLIGHT, row.c.claim_expires_at <= now),
    ]
    if resend_on_update:
        clauses.append(sa.and_(row.c.state == DeliveryState.DELIVERED, row.c.lead_version < current_version))
    return sa.or_(*clauses)


def _unowned(row: Any, *, current_version: Any, resend_on_update: bool) -> sa.ColumnElement[bool]:
    """SQL truth of "no state holds this lead": what ``pending`` counts (due retries count as retrying)."""
    clauses = [row.c.state == DeliveryState.PENDING]
    if resend_on_update:
        clauses.append(sa.and_(row.c.state == DeliveryState.DELIVERED, row.c.lead_version < current_version))
    return sa.or_(*clauses)


def pending_select(
    sel: Selection,
    dialect_name: str,
    *,
    now: datetime,
    shard: Shard | None,
    after_id: int,
    limit: int | None,
    claimable_now: bool = True,
    lead_ids: Sequence[int] | None = None,
    below: Floor | None = None,
) -> sa.Select[Any]:
    """One SELECT: matching active leads without a blocking delivery row, keyset-paged by id.

    :param below: look only at ids up to this floor, and there only at leads that changed since
        it was set or have a reopened delivery row: two index range scans instead of the history.
    """
    d = deliveries.alias("d")
    # `d.lead_id > after_id` repeats the paging bound inside the join so PostgreSQL reads only
    # that key range of the ledger, not every row of the action on every page.
    on = sa.and_(d.c.action_key == sel.action_key, d.c.lead_id == leads.c.id, d.c.lead_id > after_id)
    source: Any = leads
    paged_id: Any = leads.c.id
    if below is not None:
        # The few candidate ids drive the join; bounding them (not leads.id) keeps every planner
        # from walking the leads' primary key over the whole range instead.
        maybe = _changed_or_reopened(sel.action_key, below, after_id).subquery("maybe")
        source = maybe.join(leads, leads.c.id == maybe.c.id)
        paged_id = maybe.c.id
    join = source.outerjoin(d, on)
    resend = sel.action.resend_on_update
    if claimable_now:
        open_row = claimable(d, now=now, current_version=leads.c.updated_at, resend_on_update=resend)
    else:
        open_row = _unowned(d, current_version=leads.c.updated_at, resend_on_update=resend)
    query = (
        sa.select(*LEAD_COLUMNS)
        .select_from(join)
        .where(*sel.conditions(dialect_name), paged_id > after_id, sa.or_(d.c.lead_id.is_(None), open_row))
        .order_by(leads.c.id)
    )
    if below is not None:
        query = query.where(paged_id <= below.lead_id)
    if shard is not None and shard.count > 1:
        query = query.where(leads.c.id % shard.count == shard.index)
    if lead_ids is not None:
        query = query.where(leads.c.id.in_(lead_ids))
    return query.limit(limit) if limit is not None else query


def _changed_or_reopened(action_key: str, below: Floor, after_id: int) -> sa.CompoundSelect[Any]:
    """Ids that may be pending again below the floor: changed leads, reopened delivery rows.

    The changed leads are found by ``updated_at`` alone, so every database reads them from that
    index (an id range here would tempt SQLite into walking the primary key instead); the caller
    bounds the ids.
    """
    changed = sa.select(leads.c.id).where(leads.c.updated_at > below.since)
    d = deliveries.alias("reopened")
    reopened = sa.select(d.c.lead_id).where(
        d.c.action_key == action_key,
        d.c.state.in_([DeliveryState.PENDING, DeliveryState.RETRYING, DeliveryState.IN_FLIGHT]),
        d.c.lead_id > after_id,
        d.c.lead_id <= below.lead_id,
    )
    return sa.union(changed, reopened)
