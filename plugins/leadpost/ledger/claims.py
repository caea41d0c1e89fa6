"""Claim before send, record after: the write side of the delivery ledger."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from leadpost.ledger.selection import LEAD_COLUMNS, Selection, Shard, claimable, pending_select
from leadpost.states import DeliveryState, Outcome, OutcomeKind
from leadpost.store import deliveries, leads, utcnow
from leadpost.store.engine import dialect_insert, id_in

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = ["DEFAULT_CLAIM_TTL_S", "claim_batch", "claim_ttl", "record_outcomes", "release_claims"]

log = logging.getLogger(__name__)

DEFAULT_CLAIM_TTL_S = 900  # longer than any page takes to send, retries included
_BACKOFF_BASE_S = 30.0  # between runs: 30 s, 1 min, 2 min … capped
_BACKOFF_CAP_S = 6 * 3600.0
_ERROR_MAX = 300


def claim_ttl() -> timedelta:
    """How long a claim holds before another dispatcher may take the lead (``LEADPOST_CLAIM_TTL_S``)."""
    return timedelta(seconds=float(os.environ.get("LEADPOST_CLAIM_TTL_S", DEFAULT_CLAIM_TTL_S)))


# --- selections -------------------------------------------------------------------------------


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
    up_to: int | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """Claim the next page of pending leads of ``shard`` with ids above ``after_id``.

    :param lead_ids: only these leads (operators given explicit ids; a walk's catch-up below its floor).
    :param up_to: only ids up to this one (a walk's sweep below its floor).
    :return: the claim token and the claimed leads (id, fields, ``updated_at``), ordered by id.
    """
    now = now or utcnow()
    token = token or uuid.uuid4().hex
    dialect = engine.dialect.name
    with engine.begin() as conn:
        query = pending_select(
            sel,
            dialect,
            now=now,
            shard=shard,
            after_id=after_id,
            limit=limit,
            lead_ids=lead_ids,
            up_to=up_to,
        )
        if dialect == "postgresql":
            query = _lock_candidates(conn, query)
            if query is None:
                return token, []
        result = conn.execute(query)
        keys = list(result.keys())
        candidates = [dict(zip(keys, row, strict=True)) for row in result.all()]
        if not candidates:
            return token, []
        claimed = _claim_rows(conn, sel, candidates, token=token, now=now)
    return token, [c for c in candidates if c["id"] in claimed]


def _lock_candidates(conn: Connection, query: sa.Select[Any]) -> sa.Select[Any] | None:
    """PostgreSQL: the page's lead ids without locks, then those leads locked, skipping rivals'.

    Concurrent claimers skip each other's candidate rows instead of queueing behind them (the
    upsert stays the guard against double ownership). Locking in a second, by-id statement keeps
    the search free to run as a parallel query: a walk from id 0 through a long delivered history
    takes less than half the time.
    """
    ids = list(conn.execute(query.with_only_columns(leads.c.id)).scalars())
    if not ids:
        return None
    return (
        sa.select(*LEAD_COLUMNS)
        .where(id_in(leads.c.id, "candidate_ids", "postgresql", value=ids))
        .order_by(leads.c.id)
        .with_for_update(of=leads, skip_locked=True, key_share=True)
    )


def _claim_rows(
    conn: Connection, sel: Selection, candidates: list[dict[str, Any]], *, token: str, now: datetime
) -> set[int]:
    # INSERT … SELECT from leads: one statement per page, no per-row parameters to process.
    columns = ["action_key", "lead_id", "lead_version", "state", "attempts", "claim_token"]
    columns += ["claim_expires_at", "created_at", "updated_at"]
    stamp = deliveries.c.updated_at.type
    rows = sa.select(
        sa.literal(sel.action_key),
        leads.c.id,
        leads.c.updated_at,
        sa.literal(DeliveryState.IN_FLIGHT.value),
        sa.literal(0),
        sa.literal(token),
        sa.literal(now + claim_ttl(), stamp),
        sa.literal(now, stamp),
        sa.literal(now, stamp),
    ).where(id_in(leads.c.id, "ids", conn.dialect.name))
    stmt = dialect_insert(conn.dialect.name)(deliveries).from_select(columns, rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=[deliveries.c.action_key, deliveries.c.lead_id],
        set_={
            "state": DeliveryState.IN_FLIGHT,
            "claim_token": stmt.excluded.claim_token,
            "claim_expires_at": stmt.excluded.claim_expires_at,
            "lead_version": stmt.excluded.lead_version,
            "updated_at": stmt.excluded.updated_at,
        },
        where=claimable(
            deliveries,
            now=now,
            current_version=stmt.excluded.lead_version,
            resend_on_update=sel.action.resend_on_update,
        ),
    ).returning(deliveries.c.lead_id)
    return set(conn.execute(stmt, {"ids": [c["id"] for c in candidates]}).scalars())


# --- recording --------------------------------------------------------------------------------


def _retry_at(now: datetime, attempts: int, retry_after_s: float | None) -> datetime:
    """Exponential backoff with jitter between runs; never earlier than the receiver's Retry-After."""
    delay = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** max(0, attempts - 1))
    delay = delay * (0.5 + random.random() / 2)
    return now + timedelta(seconds=max(delay, retry_after_s or 0))


def _short(error: str | None) -> str | None:
    return None if error is None else error[:_ERROR_MAX]


@cache
def _outcome_updates(dialect_name: str) -> tuple[sa.Update, sa.Update, sa.Update]:
    """The three UPDATEs that record outcomes, built once: recording runs many times per page."""
    d = deliveries.c
    mine = sa.and_(
        d.action_key == sa.bindparam("k"), d.lead_id == sa.bindparam("i"), d.claim_token == sa.bindparam("t")
    )
    attempts = d.attempts + sa.bindparam("n", type_=sa.Integer)
    now = sa.bindparam("now", type_=d.updated_at.type)
    done = {
        "claim_token": None,
        "claim_expires_at": None,
        "updated_at": now,
        "last_status": sa.bindparam("s"),
    }
    # Deliveries come in bulk with the same status: one UPDATE per (status, tries), ids expanded.
    delivered = (
        deliveries.update()
        .where(
            d.action_key == sa.bindparam("k"),
            d.claim_token == sa.bindparam("t"),
            id_in(d.lead_id, "ids", dialect_name),
        )
        .values(
            state=DeliveryState.DELIVERED,
            attempts=attempts,
            last_error=None,
            next_attempt_at=None,
            delivered_at=now,
            **done,
        )
    )
    dead = sa.or_(sa.bindparam("dead", type_=sa.Boolean), attempts >= sa.bindparam("max", type_=sa.Integer))
    failed = (
        deliveries.update()
        .where(mine)
        .values(
            state=sa.case((dead, DeliveryState.DEAD), else_=DeliveryState.RETRYING),
            attempts=attempts,
            last_error=sa.bindparam("e"),
            next_attempt_at=sa.bindparam("at", type_=d.next_attempt_at.type),  # unused once dead
            **done,
        )
    )
    released = (
        deliveries.update()
        .where(mine)
        .values(state=DeliveryState.PENDING, last_error=sa.bindparam("e"), **done)
    )
    return delivered, failed, released


@contextlib.contextmanager
def _transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """A transaction on ``bind``: a fresh pooled connection for an engine, or the one given."""
    if isinstance(bind, sa.Connection):
        with bind.begin():
            yield bind
    else:
        with bind.begin() as conn:
            yield conn


def record_outcomes(
    bind: Engine | Connection,
    *,
    action_key: str,
    token: str,
    results: Sequence[tuple[int, Outcome, int]],
    max_attempts: int,
    now: datetime | None = None,
) -> None:
    """Record outcomes in one transaction.

    :param bind: the engine, or a connection the caller keeps open across many calls (dispatch
        records every few dozen requests; checking a connection out each time costs more than
        the write).
    :param results: ``(lead_id, outcome, tries)`` per lead; ``tries`` is how many requests this
        run made for it (in-run retries included).
    :param max_attempts: a transient failure with this many attempts in total becomes a dead letter.
    """
    now = now or utcnow()
    delivered: dict[tuple[int, int | None], list[int]] = {}
    failed, released = [], []
    for lead_id, outcome, tries in results:
        if outcome.kind is OutcomeKind.DELIVERED:
            delivered.setdefault((tries, outcome.status), []).append(lead_id)
            continue
        row = {"k": action_key, "i": lead_id, "t": token, "n": tries, "s": outcome.status, "now": now}
        if outcome.kind in (OutcomeKind.TRANSIENT, OutcomeKind.REJECTED):
            dead_now = outcome.kind is OutcomeKind.REJECTED
            retry_at = None if dead_now else _retry_at(now, tries, outcome.retry_after_s)
            failed.append(
                row | {"e": _short(outcome.error), "dead": dead_now, "at": retry_at, "max": max_attempts}
            )
        else:  # auth failed / gone: the action is at fault, not the lead — it waits for a re-test
            released.append(row | {"e": _short(outcome.error)})
    with _transaction(bind) as conn:
        record_delivered, record_failed, record_released = _outcome_updates(conn.dialect.name)
        for (tries, status), ids in delivered.items():
            params = {"k": action_key, "t": token, "ids": ids, "n": tries, "s": status, "now": now}
            conn.execute(record_delivered, params)
        for stmt, rows in ((record_failed, failed), (record_released, released)):
            if rows:
                conn.execute(stmt, rows)


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
