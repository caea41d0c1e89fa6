"""Write one chunk of valid import rows in one transaction: match, merge, upsert, replace tags.

The rows are matched to stored leads by ``id`` when they give one, else by ``email``; later rows
for the same lead are merged over earlier ones. Leads whose values and tags would not change are
left untouched (counted ``unchanged``); the others move ``updated_at`` strictly forward. Writing
takes a handful of statements per chunk (a lookup, batched upserts, tag replacement), so memory
and round trips stay flat however long the file is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from leadpost.exceptions import ImportRowError
from leadpost.store.engine import utcnow
from leadpost.store.import_file import LEAD_COLUMNS
from leadpost.store.import_row import ParsedRow, show_value
from leadpost.store.schema import SCAN_CLOCK_MARGIN, lead_tags, leads, scan_floors

__all__ = ["ImportCounts", "write_chunk"]

_IN_BATCH = 500  # bound parameters per IN (...) list, well under SQLite's limit
_ONE_TICK = timedelta(microseconds=1)


@dataclass
class ImportCounts:
    """Running totals of an import, updated chunk by chunk.

    :param imported: rows that created a new lead.
    :param updated: rows that matched an existing lead (including ``unchanged`` ones).
    :param unchanged: of ``updated``, rows whose lead already held exactly those values.
    :param rejected: rows refused.
    :param rejections: the rejections kept for the summary.
    """

    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejections: list[ImportRowError] = field(default_factory=list)


@dataclass
class _Target:
    """One lead a chunk writes: the merge of the chunk's rows for it."""

    key: tuple[str, Any]  # ("id", 12) or ("email", "new@x.com") for a new lead without id
    values: dict[str, Any]
    tags: frozenset[str] | None
    rows: int = 1


# Marks an email a lead gives up in this chunk: another id taking it in the same batched upsert
# could trip the unique index mid-statement, so that row waits for the next import.
_RELEASED = ("released", None)


def write_chunk(
    engine: Engine,
    rows: list[ParsedRow],
    *,
    counts: ImportCounts,
    reject: Callable[[ImportRowError], None],
) -> None:
    """Write ``rows`` in one transaction and add what happened to ``counts``.

    :param engine: the lead store.
    :param rows: valid rows, in file order.
    :param counts: totals to update (``imported``, ``updated``, ``unchanged``).
    :param reject: called for a row refused because of another lead's email.
    """
    with engine.begin() as conn:
        existing = _existing_leads(conn, rows)
        existing_tags = _existing_tags(conn, [k for k in existing if isinstance(k, int)])
        targets = _resolve(rows, existing, counts, reject)
        by_id, by_email, write_tags = _plan_writes(targets.values(), existing, existing_tags, counts)
        _upsert(conn, by_id, conflict=leads.c.id)
        if (by_id or by_email) and conn.dialect.name == "postgresql":
            _sync_id_sequence(conn)  # explicit ids do not advance the serial sequence
        _upsert(conn, [{k: v for k, v in p.items() if k != "id"} for p in by_email], conflict=leads.c.email)
        _replace_tags(conn, write_tags)
        _lower_scan_floors(conn, by_id)


def _batches(items: list[Any], size: int = _IN_BATCH) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _existing_leads(conn: Connection, rows: list[ParsedRow]) -> dict[Any, dict[str, Any]]:
    """Stored leads the chunk may touch, keyed by id *and* by email (same dict)."""
    ids = sorted({row.values["id"] for row in rows if "id" in row.values})
    emails = sorted({row.values["email"] for row in rows})
    found: dict[Any, dict[str, Any]] = {}
    for column, keys in ((leads.c.id, ids), (leads.c.email, emails)):
        for batch in _batches(keys):
            for stored in conn.execute(sa.select(leads).where(column.in_(batch))).mappings():
                found[stored["id"]] = dict(stored)
                found[stored["email"]] = found[stored["id"]]
    return found


def _existing_tags(conn: Connection, ids: list[int]) -> dict[int, frozenset[str]]:
    tags: dict[int, set[str]] = {lead_id: set() for lead_id in ids}
    for batch in _batches(sorted(ids)):
        stmt = sa.select(lead_tags.c.lead_id, lead_tags.c.tag).where(lead_tags.c.lead_id.in_(batch))
        for lead_id, tag in conn.execute(stmt):
            tags[lead_id].add(tag)
    return {lead_id: frozenset(t) for lead_id, t in tags.items()}


def _resolve(
    rows: list[ParsedRow],
    existing: dict[Any, dict[str, Any]],
    counts: ImportCounts,
    reject: Callable[[ImportRowError], None],
) -> dict[tuple[str, Any], _Target]:
    """Map each row to the lead it writes, in file order, merging later rows over earlier ones."""
    # Who holds each email, as the rows so far would leave it.
    owner: dict[str, tuple[str, Any]] = {
        k: ("id", v["id"]) for k, v in existing.items() if isinstance(k, str)
    }
    email_of: dict[int, str] = {k: v["email"] for k, v in existing.items() if isinstance(k, int)}
    targets: dict[tuple[str, Any], _Target] = {}
    for row in rows:
        email = row.values["email"]
        holder = owner.get(email)
        if holder == _RELEASED:
            if "id" in row.values:
                reason = (
                    f"email {show_value(email)} is being given up by another lead in the same batch of rows"
                )
                reject(ImportRowError(row.line, f"{reason}; import this row again to use it"))
                continue
            holder = None  # new leads are inserted after the updates that free the email
        if "id" in row.values:
            key: tuple[str, Any] = ("id", row.values["id"])
            if holder is not None and holder != key:
                held_by = f"lead {holder[1]}" if holder[0] == "id" else "a new lead earlier in the file"
                reject(ImportRowError(row.line, f"email {show_value(email)} already belongs to {held_by}"))
                continue
            previous = email_of.get(key[1])
            if previous is not None and previous != email:
                owner[previous] = _RELEASED
            email_of[key[1]] = email
        else:
            key = holder or ("email", email)
        owner[email] = key
        target = targets.get(key)
        if target is None:
            is_new = key[0] == "email" or key[1] not in existing
            values = dict(row.values)
            if key[0] == "id":
                values["id"] = key[1]  # rows matched by email write to the lead's id
            targets[key] = _Target(key, values, row.tags)
            if is_new:
                counts.imported += 1
            else:
                counts.updated += 1
        else:
            target.values.update(row.values)
            if row.tags is not None:
                target.tags = row.tags
            target.rows += 1
            counts.updated += 1
    return targets


def _plan_writes(
    targets: Iterable[_Target],
    existing: dict[Any, dict[str, Any]],
    existing_tags: dict[int, frozenset[str]],
    counts: ImportCounts,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[_Target]]:
    """Insert parameters of the leads that change (by id, by email) and the targets whose tags to write."""
    now = utcnow()
    by_id: list[dict[str, Any]] = []
    by_email: list[dict[str, Any]] = []
    write_tags: list[_Target] = []
    for target in targets:
        stored = existing.get(target.key[1]) if target.key[0] == "id" else None
        if stored is not None:
            if not _changes(target, stored, existing_tags.get(stored["id"], frozenset())):
                counts.unchanged += target.rows
                continue
            # Strictly forward, even against a clock that went back or an older given value.
            moved = max(target.values.get("updated_at", now), stored["updated_at"] + _ONE_TICK)
            target.values["updated_at"] = moved
        (by_id if target.key[0] == "id" else by_email).append(_insert_params(target, now))
        if target.tags is not None:
            write_tags.append(target)
    return by_id, by_email, write_tags


def _changes(target: _Target, stored: Mapping[str, Any], stored_tags: frozenset[str]) -> bool:
    if target.tags is not None and target.tags != stored_tags:
        return True
    if target.values.get("updated_at", stored["updated_at"]) > stored["updated_at"]:
        return True
    # An older or equal updated_at alone is no change: versions never move back.
    return any(stored[c] != v for c, v in target.values.items() if c != "updated_at")


def _insert_params(target: _Target, now: datetime) -> dict[str, Any]:
    """Every column bound for the INSERT; the UPDATE part only sets the row's given columns."""
    params: dict[str, Any] = dict.fromkeys(LEAD_COLUMNS)
    params.update(score=0, status="active", captured_at=now, updated_at=now)
    params.update(target.values)
    params["_given"] = frozenset(target.values) | {"updated_at"}
    return params


def _upsert(conn: Connection, params: list[dict[str, Any]], *, conflict: sa.Column[Any]) -> None:
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for p in params:
        groups.setdefault(p.pop("_given"), []).append(p)
    for given, group in groups.items():
        stmt = insert(leads)
        keep = (conflict.name, "id")  # the matched key is never rewritten
        update = {c: stmt.excluded[c] for c in LEAD_COLUMNS if c in given and c not in keep}
        conn.execute(stmt.on_conflict_do_update(index_elements=[conflict], set_=update), group)


def _lower_scan_floors(conn: Connection, written: list[dict[str, Any]]) -> None:
    """Walks look below their floor only at leads whose updated_at is newer than the floor: a lead
    written with an older given updated_at must move the floors under it (leadpost.ledger.floors)."""
    cutoff = utcnow() - SCAN_CLOCK_MARGIN
    back_dated = [p["id"] for p in written if p["updated_at"] <= cutoff]
    if back_dated:
        lowest = min(back_dated)
        stmt = scan_floors.update().where(scan_floors.c.floor_id >= lowest).values(floor_id=lowest - 1)
        conn.execute(stmt)


def _sync_id_sequence(conn: Connection) -> None:
    # Forward only: handing out an id again could match a deleted lead's delivery records.
    conn.execute(
        sa.text(
            "SELECT CASE WHEN s.top > COALESCE(s.last, 0) THEN setval(s.seq, s.top) END FROM ("
            "SELECT q.seq, (SELECT MAX(id) FROM leads) AS top, "
            "pg_sequence_last_value(q.seq::regclass) AS last "
            "FROM (SELECT pg_get_serial_sequence('leads', 'id') AS seq) AS q) AS s"
        )
    )


def _replace_tags(conn: Connection, targets: list[_Target]) -> None:
    if not targets:
        return
    new_emails = [t.key[1] for t in targets if t.key[0] == "email"]
    lead_ids: dict[tuple[str, Any], int] = {t.key: t.key[1] for t in targets if t.key[0] == "id"}
    # Clear by id even for leads this chunk created: no stale tag row can survive a replace.
    for batch in _batches(sorted(lead_ids.values())):
        conn.execute(sa.delete(lead_tags).where(lead_tags.c.lead_id.in_(batch)))
    for batch in _batches(new_emails):
        stmt = sa.select(leads.c.email, leads.c.id).where(leads.c.email.in_(batch))
        lead_ids.update({("email", email): lead_id for email, lead_id in conn.execute(stmt)})
    rows = [{"lead_id": lead_ids[t.key], "tag": tag} for t in targets for tag in sorted(t.tags or ())]
    if rows:
        conn.execute(sa.insert(lead_tags), rows)
