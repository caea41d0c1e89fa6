"""Action status and the delivery ledger: claim before send, record after.

Each (action, lead) has at most one row in ``leadpost_deliveries``. A lead is *claimable* for an
action when it matches the trigger's filters and its row is absent, ``pending``, ``retrying`` and
due, ``in_flight`` with an expired claim (its dispatcher died), or — with ``resend_on_update`` —
``delivered`` for an older lead version.

Claiming is one ``INSERT … ON CONFLICT DO UPDATE … WHERE <claimable> RETURNING lead_id``: the
database decides, row by row, who owns a lead. On PostgreSQL the candidate leads are first
selected ``FOR NO KEY UPDATE SKIP LOCKED`` so concurrent claimers take different leads instead
of queueing; a claimer that still meets a rival's row blocks on it, re-checks the WHERE against
the committed state and gets nothing back. On SQLite the write transaction (``BEGIN IMMEDIATE``)
serialises claimers. Either way a lead is never owned twice.
Outcomes are recorded only where the row still carries the claimer's token, so a dispatcher
whose claim expired cannot overwrite the one that took over.
"""

from __future__ import annotations

import logging
import os
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from leadpost.filters import compile_filters
from leadpost.states import ActionStatus, DeliveryState, Outcome, OutcomeKind
from leadpost.store import actions, deliveries, leads, utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from leadpost.config import ActionConfig, TriggerConfig

__all__ = [
    "LEAD_COLUMNS",
    "ActionState",
    "Counts",
    "DeadLetter",
    "Selection",
    "Shard",
    "claim_batch",
    "claim_ttl",
    "count_deliveries",
    "get_action_state",
    "list_dead_letters",
    "list_recent_attempts",
    "read_status",
    "record_outcomes",
    "record_test",
    "release_claims",
    "replay_dead_letters",
    "set_action_status",
]

log = logging.getLogger(__name__)

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
DEFAULT_CLAIM_TTL_S = 900  # longer than any page takes to send, retries included
_MAX_ROWS_PER_STATEMENT = 2000  # keeps multi-VALUES statements under SQLite's variable limit
_BACKOFF_BASE_S = 30.0  # between runs: 30 s, 1 min, 2 min … capped
_BACKOFF_CAP_S = 6 * 3600.0
_ERROR_MAX = 300


def claim_ttl() -> timedelta:
    """How long a claim holds before another dispatcher may take the lead (``LEADPOST_CLAIM_TTL_S``)."""
    return timedelta(seconds=float(os.environ.get("LEADPOST_CLAIM_TTL_S", DEFAULT_CLAIM_TTL_S)))


# --- selections -------------------------------------------------------------------------------


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


def _claimable(
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


def _pending_select(
    sel: Selection,
    dialect_name: str,
    *,
    now: datetime,
    shard: Shard | None,
    after_id: int,
    limit: int | None,
    claimable_now: bool = True,
    lead_ids: Sequence[int] | None = None,
) -> sa.Select[Any]:
    """One SELECT: matching active leads without a blocking delivery row, keyset-paged by id."""
    d = deliveries.alias("d")
    join = leads.outerjoin(d, sa.and_(d.c.action_key == sel.action_key, d.c.lead_id == leads.c.id))
    resend = sel.action.resend_on_update
    if claimable_now:
        claimable = _claimable(d, now=now, current_version=leads.c.updated_at, resend_on_update=resend)
    else:
        claimable = _unowned(d, current_version=leads.c.updated_at, resend_on_update=resend)
    query = (
        sa.select(*LEAD_COLUMNS)
        .select_from(join)
        .where(*sel.conditions(dialect_name), leads.c.id > after_id, sa.or_(d.c.lead_id.is_(None), claimable))
        .order_by(leads.c.id)
    )
    if shard is not None and shard.count > 1:
        query = query.where(leads.c.id % shard.count == shard.index)
    if lead_ids is not None:
        query = query.where(leads.c.id.in_(lead_ids))
    return query.limit(limit) if limit is not None else query


def _insert(dialect_name: str) -> Any:
    return postgresql.insert if dialect_name == "postgresql" else sqlite.insert


def claim_batch(
    engine: Engine,
    sel: Selection,
    *,
    shard: Shard | None = None,
    after_id: int = 0,
    limit: int = 500,
    token: str | None = None,
    now: datetime | None = None,
    lead_ids: Sequence[int] | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """Claim the next page of pending leads of ``shard`` with ids above ``after_id``.

    :param lead_ids: only these leads (for operators given explicit ids).
    :return: the claim token and the claimed leads (id, fields, ``updated_at``), ordered by id.
    """
    now = now or utcnow()
    token = token or uuid.uuid4().hex
    dialect = engine.dialect.name
    with engine.begin() as conn:
        query = _pending_select(
            sel, dialect, now=now, shard=shard, after_id=after_id, limit=limit, lead_ids=lead_ids
        )
        if dialect == "postgresql":
            # Concurrent claimers skip each other's candidate rows instead of queueing behind them;
            # the upsert below stays the guard against double ownership.
            query = query.with_for_update(of=leads, skip_locked=True, key_share=True)
        rows = conn.execute(query)
        candidates = [dict(r._mapping) for r in rows]
        if not candidates:
            return token, []
        claimed = _claim_rows(conn, sel, candidates, token=token, now=now)
    return token, [c for c in candidates if c["id"] in claimed]


def _claim_rows(
    conn: Connection, sel: Selection, candidates: list[dict[str, Any]], *, token: str, now: datetime
) -> set[int]:
    insert = _insert(conn.dialect.name)
    expires = now + claim_ttl()
    claimed: set[int] = set()
    for start in range(0, len(candidates), _MAX_ROWS_PER_STATEMENT):
        chunk = candidates[start : start + _MAX_ROWS_PER_STATEMENT]
        stmt = insert(deliveries).values(
            [
                {
                    "action_key": sel.action_key,
                    "lead_id": c["id"],
                    "lead_version": c["updated_at"],
                    "state": DeliveryState.IN_FLIGHT,
                    "attempts": 0,
                    "claim_token": token,
                    "claim_expires_at": expires,
                    "created_at": now,
                    "updated_at": now,
                }
                for c in chunk
            ]
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[deliveries.c.action_key, deliveries.c.lead_id],
            set_={
                "state": DeliveryState.IN_FLIGHT,
                "claim_token": stmt.excluded.claim_token,
                "claim_expires_at": stmt.excluded.claim_expires_at,
                "lead_version": stmt.excluded.lead_version,
                "updated_at": stmt.excluded.updated_at,
            },
            where=_claimable(
                deliveries,
                now=now,
                current_version=stmt.excluded.lead_version,
                resend_on_update=sel.action.resend_on_update,
            ),
        ).returning(deliveries.c.lead_id)
        claimed.update(conn.execute(stmt).scalars())
    return claimed


# --- recording --------------------------------------------------------------------------------


def _retry_at(now: datetime, attempts: int, retry_after_s: float | None) -> datetime:
    """Exponential backoff with jitter between runs; never earlier than the receiver's Retry-After."""
    delay = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** max(0, attempts - 1))
    delay = delay * (0.5 + random.random() / 2)
    return now + timedelta(seconds=max(delay, retry_after_s or 0))


def _short(error: str | None) -> str | None:
    return None if error is None else error[:_ERROR_MAX]


def record_outcomes(
    engine: Engine,
    *,
    action_key: str,
    token: str,
    results: Sequence[tuple[int, Outcome, int]],
    max_attempts: int,
    now: datetime | None = None,
) -> None:
    """Record a page's outcomes in one transaction.

    :param results: ``(lead_id, outcome, tries)`` per lead; ``tries`` is how many requests this
        run made for it (in-run retries included).
    :param max_attempts: a transient failure with this many attempts in total becomes a dead letter.
    """
    now = now or utcnow()
    delivered, failed, released = [], [], []
    for lead_id, outcome, tries in results:
        base = {"k": action_key, "i": lead_id, "t": token, "n": tries, "s": outcome.status}
        if outcome.kind is OutcomeKind.DELIVERED:
            delivered.append(base)
        elif outcome.kind in (OutcomeKind.TRANSIENT, OutcomeKind.REJECTED):
            dead_now = outcome.kind is OutcomeKind.REJECTED
            failed.append(
                base
                | {
                    "e": _short(outcome.error),
                    "dead": dead_now,
                    "at": None if dead_now else _retry_at(now, tries, outcome.retry_after_s),
                }
            )
        else:  # auth failed / gone: the action is at fault, not the lead — it waits for a re-test
            released.append(
                {"k": action_key, "i": lead_id, "t": token, "s": outcome.status, "e": _short(outcome.error)}
            )
    d = deliveries.c
    mine = sa.and_(
        d.action_key == sa.bindparam("k"), d.lead_id == sa.bindparam("i"), d.claim_token == sa.bindparam("t")
    )
    attempts = d.attempts + sa.bindparam("n", type_=sa.Integer)
    with engine.begin() as conn:
        if delivered:
            conn.execute(
                deliveries.update()
                .where(mine)
                .values(
                    state=DeliveryState.DELIVERED,
                    attempts=attempts,
                    last_status=sa.bindparam("s"),
                    last_error=None,
                    claim_token=None,
                    claim_expires_at=None,
                    next_attempt_at=None,
                    updated_at=now,
                    delivered_at=now,
                ),
                delivered,
            )
        if failed:
            dead = sa.or_(sa.bindparam("dead", type_=sa.Boolean), attempts >= max_attempts)
            conn.execute(
                deliveries.update()
                .where(mine)
                .values(
                    state=sa.case((dead, DeliveryState.DEAD), else_=DeliveryState.RETRYING),
                    attempts=attempts,
                    last_status=sa.bindparam("s"),
                    last_error=sa.bindparam("e"),
                    claim_token=None,
                    claim_expires_at=None,
                    next_attempt_at=sa.bindparam("at", type_=d.next_attempt_at.type),  # unused once dead
                    updated_at=now,
                ),
                failed,
            )
        if released:
            conn.execute(
                deliveries.update()
                .where(mine)
                .values(
                    state=DeliveryState.PENDING,
                    last_status=sa.bindparam("s"),
                    last_error=sa.bindparam("e"),
                    claim_token=None,
                    claim_expires_at=None,
                    updated_at=now,
                ),
                released,
            )


def release_claims(engine: Engine, *, action_key: str, token: str, lead_ids: Iterable[int]) -> int:
    """Give unsent claimed leads back (pending, no attempt counted): the run stopped before them."""
    params = [{"k": action_key, "i": i, "t": token} for i in lead_ids]
    if not params:
        return 0
    d = deliveries.c
    stmt = (
        deliveries.update()
        .where(
            d.action_key == sa.bindparam("k"),
            d.lead_id == sa.bindparam("i"),
            d.claim_token == sa.bindparam("t"),
        )
        .values(state=DeliveryState.PENDING, claim_token=None, claim_expires_at=None, updated_at=utcnow())
    )
    with engine.begin() as conn:
        conn.execute(stmt, params)
    return len(params)


# --- counts, dead letters, replay -------------------------------------------------------------


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
    """Counts per state for one action (two queries: ledger states, and pending leads)."""
    now = now or utcnow()
    d = deliveries.c
    with engine.connect() as conn:
        by_state = dict(
            conn.execute(
                sa.select(d.state, sa.func.count()).where(d.action_key == sel.action_key).group_by(d.state)
            ).all()
        )
        pending_q = _pending_select(
            sel, engine.dialect.name, now=now, shard=None, after_id=0, limit=None, claimable_now=False
        )
        pending = conn.execute(sa.select(sa.func.count()).select_from(pending_q.subquery())).scalar_one()
    return Counts(
        pending=pending,
        in_flight=by_state.get(DeliveryState.IN_FLIGHT, 0),
        delivered=by_state.get(DeliveryState.DELIVERED, 0),
        retrying=by_state.get(DeliveryState.RETRYING, 0),
        dead=by_state.get(DeliveryState.DEAD, 0),
    )


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


@dataclass(frozen=True)
class ActionState:
    """An action's activation state as stored, judged against its current fingerprint."""

    action_key: str
    status: ActionStatus
    reason: str | None = None
    last_test_at: datetime | None = None
    last_test_ok: bool | None = None
    last_test_status: int | None = None
    last_test_message: str | None = None

    @property
    def can_send(self) -> bool:
        return self.status is ActionStatus.ACTIVE


def get_action_state(engine: Engine, action_key: str, *, fingerprint: str) -> ActionState:
    """The action's status; ``untested`` when it was never tested or its configuration changed."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(actions).where(actions.c.action_key == action_key)).mappings().first()
    if row is None:
        return ActionState(action_key, ActionStatus.UNTESTED, "never tested")
    last = {k: row[k] for k in ("last_test_at", "last_test_ok", "last_test_status", "last_test_message")}
    if row["tested_fingerprint"] != fingerprint:
        reason = "configuration changed since the last successful test" if row["tested_fingerprint"] else None
        return ActionState(
            action_key, ActionStatus.UNTESTED, reason or row["status_reason"] or "never passed a test", **last
        )
    return ActionState(action_key, ActionStatus(row["status"]), row["status_reason"], **last)


def _upsert_action(conn: Connection, action_key: str, values: dict[str, Any]) -> None:
    insert = _insert(conn.dialect.name)
    row = {"action_key": action_key, "updated_at": utcnow(), "status": ActionStatus.UNTESTED, **values}
    stmt = insert(actions).values(row)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[actions.c.action_key], set_={k: row[k] for k in row if k != "action_key"}
        )
    )


def record_test(
    engine: Engine,
    action_key: str,
    *,
    fingerprint: str,
    ok: bool,
    status_code: int | None,
    message: str,
) -> ActionStatus:
    """Store a test execution. A pass activates the action for this fingerprint; a failure leaves
    it inactive (untested, or failing/disabled as it was) and keeps the reason."""
    now = utcnow()
    test = {
        "last_test_at": now,
        "last_test_ok": ok,
        "last_test_status": status_code,
        "last_test_message": message[:_ERROR_MAX],
    }
    with engine.begin() as conn:
        if ok:
            values = {
                "status": ActionStatus.ACTIVE,
                "status_reason": "test execution passed",
                "tested_fingerprint": fingerprint,
            }
            _upsert_action(conn, action_key, {**values, **test, "consecutive_failures": 0})
            new = ActionStatus.ACTIVE
        else:
            current = conn.execute(
                sa.select(actions.c.status, actions.c.tested_fingerprint).where(
                    actions.c.action_key == action_key
                )
            ).first()
            keep = (
                current is not None
                and current.tested_fingerprint == fingerprint
                and current.status != ActionStatus.ACTIVE
            )
            new = ActionStatus(current.status) if keep else ActionStatus.UNTESTED
            values = {"status": new, "status_reason": f"test execution failed: {message}"[:_ERROR_MAX]}
            if not keep:
                values["tested_fingerprint"] = None
            _upsert_action(conn, action_key, {**values, **test})
    log.info("%s: test execution %s -> %s", action_key, "passed" if ok else "failed", new)
    return new


def read_status(engine: Engine, action_key: str) -> ActionStatus | None:
    """The stored status alone (no fingerprint check): cheap enough to ask before every page."""
    with engine.connect() as conn:
        value = conn.execute(sa.select(actions.c.status).where(actions.c.action_key == action_key)).scalar()
    return ActionStatus(value) if value else None


def set_action_status(engine: Engine, action_key: str, status: ActionStatus, *, reason: str) -> bool:
    """Move an active action to ``failing`` or ``disabled`` (logged once, with why).

    :return: whether the status changed (so callers log transitions exactly once).
    """
    with engine.begin() as conn:
        result = conn.execute(
            actions.update()
            .where(actions.c.action_key == action_key, actions.c.status != status)
            .values(status=status, status_reason=reason[:_ERROR_MAX], updated_at=utcnow())
        )
    changed = result.rowcount > 0
    if changed:
        log.warning("%s is now %s: %s", action_key, status, reason)
    return changed
