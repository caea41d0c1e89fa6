"""What an action is after: Selection (trigger filters for one day), Shard, the one SELECT that
finds its pending leads, keyset-paged by id, and the ids worth a look below a scan Floor."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from leadpost.filters import compile_filters
from leadpost.states import DeliveryState
from leadpost.store import deliveries, leads
from leadpost.store.engine import id_in

if TYPE_CHECKING:
    from collections.abc import Sequence

    from leadpost.config import ActionConfig, TriggerConfig

__all__ = [
    "LEAD_COLUMNS",
    "Floor",
    "Selection",
    "Shard",
    "catch_up_ids",
    "changed_below",
    "claimable",
    "pending_select",
]

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
    up_to: int | None = None,
) -> sa.Select[Any]:
    """One SELECT: matching active leads without a blocking delivery row, keyset-paged by id.

    :param lead_ids: only these leads (bound as one array parameter, looked up by primary key).
    :param up_to: only ids up to this one (a walk's sweep below its floor).
    """
    d = deliveries.alias("d")
    # `d.lead_id > after_id` repeats the paging bound inside the join so PostgreSQL reads only
    # that key range of the ledger, not every row of the action on every page.
    on = sa.and_(d.c.action_key == sel.action_key, d.c.lead_id == leads.c.id, d.c.lead_id > after_id)
    resend = sel.action.resend_on_update
    if claimable_now:
        open_row = claimable(d, now=now, current_version=leads.c.updated_at, resend_on_update=resend)
    else:
        open_row = _unowned(d, current_version=leads.c.updated_at, resend_on_update=resend)
    query = (
        sa.select(*LEAD_COLUMNS)
        .select_from(leads.outerjoin(d, on))
        .where(*sel.conditions(dialect_name), leads.c.id > after_id, sa.or_(d.c.lead_id.is_(None), open_row))
        .order_by(leads.c.id)
    )
    if shard is not None and shard.count > 1:
        query = query.where(leads.c.id % shard.count == shard.index)
    if lead_ids is not None:
        query = query.where(id_in(leads.c.id, "lead_ids", dialect_name, value=list(lead_ids)))
    if up_to is not None:
        query = query.where(leads.c.id <= up_to)
    return query.limit(limit) if limit is not None else query


_REOPENED = (DeliveryState.PENDING, DeliveryState.RETRYING, DeliveryState.IN_FLIGHT)


def changed_below(floor: Floor, *, after_id: int = 0) -> sa.Select[Any]:
    """Ids in ``(after_id, floor]`` of leads whose ``updated_at`` moved since the floor was set."""
    # `id + 0` (in the bounds and any order on it) keeps the planner on the updated_at index
    # rather than walking the whole id range in primary-key order.
    unindexed_id = leads.c.id + 0
    return sa.select(unindexed_id.label("id")).where(
        leads.c.updated_at > floor.since, unindexed_id > after_id, unindexed_id <= floor.lead_id
    )


def catch_up_ids(
    sel: Selection, floor: Floor, *, shard: Shard | None, after_id: int, limit: int | None
) -> sa.Select[Any]:
    """Ids in ``(after_id, floor]`` that may be pending again, in order: leads changed since the
    floor was set, and delivery rows reopened (released, retrying, expired claim, replayed).

    Each source is an index range scan of its own: changed leads by ``updated_at``, reopened rows
    by (action, state, lead id). The page is then looked up among these ids only, by primary key.
    """
    branches = [changed_below(floor, after_id=after_id)]
    for state in _REOPENED:
        d = deliveries.alias(f"reopened_{state.value}")
        branches.append(
            sa.select(d.c.lead_id.label("id")).where(
                d.c.action_key == sel.action_key,
                d.c.state == state,
                d.c.lead_id > after_id,
                d.c.lead_id <= floor.lead_id,
            )
        )
    if shard is not None and shard.count > 1:
        branches = [b.where(b.selected_columns.id % shard.count == shard.index) for b in branches]
    if limit is not None:  # each source stops after `limit` ids: a page never reads a whole backlog
        branches = [sa.select(b.order_by("id").limit(limit).subquery().c.id) for b in branches]
    ids = sa.union(*branches).subquery("maybe")
    query = sa.select(ids.c.id).order_by(ids.c.id)
    return query.limit(limit) if limit is not None else query
