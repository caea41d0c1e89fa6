"""Scan floors: a run costs what is new, not the whole delivered history.

A shard finds its pending leads by walking the leads in id order. Once a walk has gone past an
id, every lead at or below it that matched had a delivery row; the walk leaves that id behind as
the shard's *floor*. The next walk first looks below the floor at the only leads that can be
pending there — leads whose ``updated_at`` moved since the floor was set, and delivery rows that
were reopened (released, due for a retry, claim expired, replayed) — then walks on from the floor.

A floor is not used (the walk starts at id 0 and sets a new one) when the trigger's filters,
timezone or ``resend_on_update`` changed, on a new day for ``birthday_today`` triggers, and when
more than :data:`CATCH_UP_MAX` leads changed below it. At least once every
:data:`FULL_WALK_EVERY` a run also sweeps every lead below its floor, after the leads above it
went out: a lead written into the table by other means with an id below the floor and an
``updated_at`` older than the floor is found by that daily sweep (``leadpost leads import``
lowers the floors itself when it writes such a back-dated lead).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from leadpost.ledger.claims import claim_batch
from leadpost.ledger.selection import Floor, Selection, Shard, catch_up_ids, changed_below
from leadpost.store import leads, scan_floors, utcnow
from leadpost.store.engine import dialect_insert
from leadpost.store.schema import SCAN_CLOCK_MARGIN as CLOCK_MARGIN

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["CATCH_UP_MAX", "CLOCK_MARGIN", "FULL_WALK_EVERY", "ShardWalk", "action_floor", "floor_basis"]

log = logging.getLogger(__name__)

FULL_WALK_EVERY = timedelta(days=1)
CATCH_UP_MAX = 50_000  # more changed leads than this below the floor: a walk from 0 is cheaper


def floor_basis(sel: Selection) -> str:
    """Fingerprint of what a floor depends on: the filters, zone, resend rule (and day, for birthdays)."""
    trigger = sel.trigger
    basis: dict[str, Any] = {
        "filters": trigger.filters.model_dump(mode="json"),
        "timezone": trigger.timezone,
        "resend_on_update": sel.action.resend_on_update,
    }
    if trigger.filters.birthday_today:
        basis["day"] = sel.today.isoformat()
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


def action_floor(conn: sa.Connection, sel: Selection, *, now: datetime | None = None) -> Floor | None:
    """A floor that holds for every lead of the action (for counting): the lowest floor of one
    complete set of shard floors, or ``None`` when no complete, current set exists."""
    now = now or utcnow()
    c = scan_floors.c
    rows = conn.execute(
        sa.select(c.shard_count, c.floor_id, c.since, c.full_walk_at).where(
            c.action_key == sel.action_key, c.basis == floor_basis(sel)
        )
    ).all()
    best: Floor | None = None
    for count in {row.shard_count for row in rows}:
        layout = [row for row in rows if row.shard_count == count]
        if len(layout) != count or any(now - row.full_walk_at >= FULL_WALK_EVERY for row in layout):
            continue
        floor = Floor(min(row.floor_id for row in layout), min(row.since for row in layout))
        if best is None or floor.lead_id > best.lead_id:
            best = floor
    return best


@dataclass
class ShardWalk:
    """One run's walk over a shard: claims pages below the floor first, then above it, then
    (once a day) sweeps everything below it.

    ``claim(after_id)`` is what the dispatch feed calls for each page; :meth:`finish` stores the
    new floor once the run is over.
    """

    engine: Engine
    sel: Selection
    shard: Shard
    started_at: datetime = field(default_factory=utcnow)
    floor: Floor | None = None  # None: this walk starts at id 0
    full_walk_at: datetime | None = None
    catching_up: bool = False
    reached: int = 0  # the highest id the walk above the floor has gone through
    exhausted: bool = False  # nothing left above the floor
    sweep_due: bool = False  # the daily sweep below the floor, once what is new went out
    swept: bool = False
    _max_id: int = 0

    def __post_init__(self) -> None:
        with self.engine.connect() as conn:
            self._max_id = conn.execute(sa.select(sa.func.coalesce(sa.func.max(leads.c.id), 0))).scalar_one()
            row = conn.execute(sa.select(scan_floors).where(*self._key())).mappings().first()
            if row is None or not self._usable(conn, row):
                return
        self.floor = Floor(row["floor_id"], row["since"])
        self.full_walk_at = row["full_walk_at"]
        self.catching_up = True
        self.reached = row["floor_id"]
        self.sweep_due = self.started_at - row["full_walk_at"] >= FULL_WALK_EVERY

    def _key(self) -> list[sa.ColumnElement[bool]]:
        c = scan_floors.c
        return [
            c.action_key == self.sel.action_key,
            c.shard_count == self.shard.count,
            c.shard_index == self.shard.index,
        ]

    def _usable(self, conn: sa.Connection, row: Any) -> bool:
        if row["basis"] != floor_basis(self.sel):
            log.info("%s: filters changed since the last run: walking every lead", self.sel.action_key)
            return False
        changed = changed_below(Floor(row["floor_id"], row["since"])).limit(CATCH_UP_MAX + 1)
        count = conn.execute(sa.select(sa.func.count()).select_from(changed.subquery())).scalar_one()
        if count > CATCH_UP_MAX:
            log.info(
                "%s: over %d leads changed since the last run: walking every lead",
                self.sel.action_key,
                CATCH_UP_MAX,
            )
            return False
        return True

    def claim(self, after_id: int, *, limit: int) -> tuple[str, list[dict[str, Any]]]:
        """Claim the next page after ``after_id`` (the last id of the previous page, 0 at first)."""
        while self.catching_up:
            assert self.floor is not None
            ids = self._candidates(after_id, limit)
            if not ids:
                self.catching_up = False
                break
            token, page = claim_batch(
                self.engine, self.sel, shard=self.shard, after_id=after_id, limit=limit, lead_ids=ids
            )
            if page:
                return token, page
            after_id = ids[-1]  # none of these was pending: look at the next ones
        if not self.exhausted:
            after_id = max(after_id, self.reached)
            token, page = claim_batch(self.engine, self.sel, shard=self.shard, after_id=after_id, limit=limit)
            if page:
                self.reached = page[-1]["id"]
                return token, page
            self.exhausted = True
            if not self.sweep_due:
                return token, page
            after_id = 0  # what is new went out: now the daily sweep below the floor
        if self.floor is None or not self.sweep_due or self.swept:
            return "", []
        token, page = claim_batch(
            self.engine, self.sel, shard=self.shard, after_id=after_id, limit=limit, up_to=self.floor.lead_id
        )
        self.swept = not page
        return token, page

    def _candidates(self, after_id: int, limit: int) -> list[int]:
        assert self.floor is not None
        query = catch_up_ids(self.sel, self.floor, shard=self.shard, after_id=after_id, limit=limit)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def finish(self) -> None:
        """Store how far this walk got (nothing when it stopped before the catch-up was done)."""
        if self.catching_up:
            return
        floor_id = max(self.reached, self._max_id) if self.exhausted else self.reached
        full_walk_at = self.started_at if self.floor is None or self.swept else self.full_walk_at
        values = {
            "basis": floor_basis(self.sel),
            "floor_id": floor_id,
            "since": self.started_at - CLOCK_MARGIN,
            "full_walk_at": full_walk_at,
            "updated_at": utcnow(),
        }
        key = {
            "action_key": self.sel.action_key,
            "shard_count": self.shard.count,
            "shard_index": self.shard.index,
        }
        with self.engine.begin() as conn:
            stmt = dialect_insert(conn.dialect.name)(scan_floors).values(**key, **values)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[
                        scan_floors.c.action_key,
                        scan_floors.c.shard_count,
                        scan_floors.c.shard_index,
                    ],
                    set_=values,
                )
            )
