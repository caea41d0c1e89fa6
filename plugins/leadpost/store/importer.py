"""``leadpost leads import FILE``: stream a ``.csv`` or ``.jsonl`` file of leads into the store.

Columns (CSV header) or keys (JSON Lines) are the ``leads`` column names plus ``tags`` (a
``;``-separated string, or a JSON list). Every data row ends up *imported* (a new lead),
*updated* (it matched an existing lead) or *rejected* with its line number and a precise
reason; nothing is dropped silently and the three counts add up to the number of data rows.

Rules, in the order a user meets them:

* Rows are matched by ``id`` when the row has one, else by ``email`` (emails are unique).
* Only the columns a row gives are written on an update; absent columns keep their stored
  value. An empty value clears a nullable column (``NULL``); for ``score``, ``status``,
  ``captured_at`` and ``updated_at`` an empty value means "not given" (new leads get
  ``0``, ``active``, now, now). ``tags`` given replace the lead's tags (empty = no tags);
  ``tags`` absent leave them alone.
* ``updated_at`` moves only when something actually changed (a value or the tag set), and
  then always strictly forward, so actions with ``resend_on_update`` see the new version.
  Importing the same file twice therefore reports every row as updated, touches nothing and
  counts them as ``unchanged``.
* Within one chunk, later rows for the same lead win (their values are merged over the
  earlier ones, as if the rows had been applied one after the other).
* An email that another lead already holds is refused on a row that names a different
  ``id``. An email a lead gives up may go to a new lead in the same chunk; to move it to another
  existing ``id`` import that row again (the unique index is checked row by row).

The file is read as a stream in chunks of ``chunk_size`` rows, each chunk written in one
transaction with a handful of statements (a lookup, batched upserts, tag replacement), so
memory stays flat however long the file is. A database error stops the import; the chunks
before it stay committed and importing the file again completes it.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from os import PathLike
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from leadpost.exceptions import ImportRowError
from leadpost.store.engine import utcnow
from leadpost.store.schema import lead_tags, leads

__all__ = ["IMPORT_COLUMNS", "ImportSummary", "import_leads"]

log = logging.getLogger(__name__)

LEAD_COLUMNS = tuple(c.name for c in leads.columns)
IMPORT_COLUMNS = (*LEAD_COLUMNS, "tags")
MAX_TEXT_LENGTH = 1000
MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit
MAX_TAG_LENGTH = 100
MAX_TAGS = 100
KEPT_REJECTIONS = 1000
_IN_BATCH = 500  # bound parameters per IN (...) list, well under SQLite's limit
_MAX_INT = 2**31 - 1  # leads.id and leads.score are 32-bit on PostgreSQL

_TEXT_COLUMNS = ("name", "phone", "company", "city", "state", "funnel")
# Not nullable, with a default: an empty value means "not given" rather than NULL.
_DEFAULTED = ("score", "status", "captured_at", "updated_at")
_EMAIL_RE = re.compile(r"^[^@\s]+@([^@\s.]+\.)+[^@\s.]{2,}$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_INT_RE = re.compile(r"^[+-]?\d+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")  # undecodable bytes (surrogateescape) or bad JSON escapes
_UTF8_BOM = codecs.BOM_UTF8
_ONE_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class ImportSummary:
    """What an import did.

    :param imported: rows that created a new lead.
    :param updated: rows that matched an existing lead (including ``unchanged`` ones).
    :param rejected: rows refused; ``imported + updated + rejected`` is the number of data rows.
    :param rejections: the first 1000 rejections, in file order.
    :param unchanged: of ``updated``, rows whose lead already held exactly those values.
    """

    imported: int
    updated: int
    rejected: int
    rejections: list[ImportRowError] = field(default_factory=list)
    unchanged: int = 0

    @property
    def rows(self) -> int:
        """Number of data rows read (blank lines are not rows)."""
        return self.imported + self.updated + self.rejected


def import_leads(
    engine: Engine,
    path: str | PathLike[str],
    *,
    chunk_size: int = 5000,
    on_reject: Callable[[ImportRowError], None] | None = None,
) -> ImportSummary:
    """Upsert the leads of a ``.csv`` or ``.jsonl`` file into the store (see the module docstring).

    :param engine: the lead store.
    :param path: the file; its suffix (``.csv`` or ``.jsonl``) selects the format.
    :param chunk_size: rows read, checked and written per transaction.
    :param on_reject: called with every rejected row as it is found (the summary keeps the first 1000).
    :raises ImportRowError: with ``line`` 1 when the file as a whole is refused (unreadable,
        duplicate or unknown CSV columns, no ``email`` column).
    :raises ValueError: when the suffix is neither ``.csv`` nor ``.jsonl``.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records: Iterator[tuple[int, Mapping[str, Any] | ImportRowError]] = _read_csv(path)
    elif suffix == ".jsonl":
        records = _read_jsonl(path)
    else:
        raise ValueError(f"{path.name}: unsupported file type {suffix or '(none)'!r}; use .csv or .jsonl")

    counts = _Counts()

    def reject(error: ImportRowError) -> None:
        counts.rejected += 1
        if len(counts.rejections) < KEPT_REJECTIONS:
            counts.rejections.append(error)
        log.debug("import %s: rejected %s", path.name, error)
        if on_reject is not None:
            on_reject(error)

    chunk: list[_Row] = []
    chunk_no = 0
    for line, record in records:
        if isinstance(record, ImportRowError):
            reject(record)
            continue
        try:
            chunk.append(_parse_row(line, record))
        except ImportRowError as error:
            reject(error)
            continue
        if len(chunk) >= chunk_size:
            chunk_no += 1
            _import_chunk(engine, chunk, counts, reject, label=f"{path.name} chunk {chunk_no}")
            chunk = []
    if chunk:
        chunk_no += 1
        _import_chunk(engine, chunk, counts, reject, label=f"{path.name} chunk {chunk_no}")

    summary = ImportSummary(
        imported=counts.imported,
        updated=counts.updated,
        rejected=counts.rejected,
        rejections=counts.rejections,
        unchanged=counts.unchanged,
    )
    log.info(
        "import %s: %d rows, %d new, %d updated (%d unchanged), %d rejected",
        path.name,
        summary.rows,
        summary.imported,
        summary.updated,
        summary.unchanged,
        summary.rejected,
    )
    return summary


# --- reading ------------------------------------------------------------------------------------


def _read_csv(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | ImportRowError]]:
    """Yield ``(line, {column: text})`` or ``(line, error)`` per data row; line = first physical line."""
    # surrogateescape keeps undecodable bytes visible, so one bad row is rejected, not the file.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ImportRowError(1, "the file is empty; the first line must name the columns") from None
        except csv.Error as exc:
            raise ImportRowError(1, f"the header is not readable CSV: {exc}") from None
        columns = _check_header(header)
        previous = reader.line_num
        while True:
            line = previous + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                previous = reader.line_num
                yield line, ImportRowError(line, f"malformed CSV: {exc}")
                continue
            previous = reader.line_num
            if not values:
                continue  # a blank line is not a row
            if len(values) != len(columns):
                bad = ImportRowError(
                    line, f"{len(values)} values but the header names {len(columns)} columns"
                )
                yield line, bad
                continue
            yield line, dict(zip(columns, values, strict=True))


def _check_header(header: list[str]) -> list[str]:
    if _SURROGATE_RE.search("".join(header)):
        raise ImportRowError(1, "the header is not UTF-8 text; save the file as UTF-8")
    columns = [name.strip().lower() for name in header]
    nameless = [str(i) for i, name in enumerate(columns, 1) if not name]
    if nameless:
        raise ImportRowError(1, f"column(s) {', '.join(nameless)} of the header have no name")
    dupes = sorted({name for name in columns if columns.count(name) > 1})
    if dupes:
        raise ImportRowError(1, f"duplicate column(s) in the header: {', '.join(dupes)}")
    unknown = [name for name in columns if name not in IMPORT_COLUMNS]
    if unknown:
        raise ImportRowError(
            1,
            f"unknown column(s) {', '.join(repr(n) for n in unknown)}; allowed: {', '.join(IMPORT_COLUMNS)}",
        )
    if "email" not in columns:
        raise ImportRowError(1, "the header has no 'email' column; every lead needs an email")
    return columns


def _read_jsonl(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | ImportRowError]]:
    """Yield ``(line, object)`` or ``(line, error)`` per non-blank line."""
    with path.open("rb") as fh:
        for line, raw in enumerate(fh, 1):
            if line == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = ImportRowError(
                    line, f"not UTF-8 text (byte 0x{raw[exc.start]:02X} at column {exc.start + 1})"
                )
                yield line, bad
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
            except _DuplicateKeyError as exc:
                yield line, ImportRowError(line, f"duplicate key {exc.args[0]!r}")
                continue
            except json.JSONDecodeError as exc:
                yield line, ImportRowError(line, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                yield line, ImportRowError(line, f"expected a JSON object, got {type(obj).__name__}")
                continue
            unknown = [key for key in obj if key not in IMPORT_COLUMNS]
            if unknown:
                names = ", ".join(repr(k) for k in unknown)
                yield (
                    line,
                    ImportRowError(line, f"unknown key(s) {names}; allowed: {', '.join(IMPORT_COLUMNS)}"),
                )
                continue
            yield line, obj


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKeyError(key)
        obj[key] = value
    return obj


# --- validating one row ---------------------------------------------------------------------------


@dataclass
class _Row:
    line: int
    values: dict[str, Any]  # the columns this row gives, parsed (email always present)
    tags: frozenset[str] | None  # None: the row says nothing about tags


_ABSENT = object()


def _show(value: Any, limit: int = 40) -> str:
    """A value for a rejection reason, shortened so huge inputs do not flood the report."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[: limit - 1] + "…")
    return repr(value)


def _parse_row(line: int, record: Mapping[str, Any]) -> _Row:
    for column, raw in record.items():
        if isinstance(raw, str) and _SURROGATE_RE.search(raw):
            raise ImportRowError(line, f"{column} is not UTF-8 text; save the file as UTF-8")
    values: dict[str, Any] = {}
    for column in LEAD_COLUMNS:
        if column in record:
            parsed = _PARSERS[column](line, column, record[column])
            if parsed is not _ABSENT:
                values[column] = parsed
    if values.get("email") is None:
        raise ImportRowError(line, "missing email")
    tags = _parse_tags(line, record["tags"]) if "tags" in record else None
    return _Row(line, values, tags)


def _clean_text(line: int, column: str, raw: Any, *, max_length: int = MAX_TEXT_LENGTH) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)  # JSON numbers for phones and the like
    if not isinstance(raw, str):
        raise ImportRowError(line, f"{column} must be text, not {type(raw).__name__}")
    text = raw.strip()
    if _CONTROL_RE.search(text):
        raise ImportRowError(
            line, f"{column} contains a line break or control character; values must fit on one line"
        )
    if len(text) > max_length:
        raise ImportRowError(line, f"{column} is longer than {max_length} characters")
    return text or None


def _parse_text(line: int, column: str, raw: Any) -> Any:
    return _clean_text(line, column, raw)


def _parse_email(line: int, column: str, raw: Any) -> Any:
    text = _clean_text(line, column, raw, max_length=MAX_EMAIL_LENGTH)
    if text is None:
        return None
    if not _EMAIL_RE.match(text):
        raise ImportRowError(line, f"invalid email {_show(text)}")
    local, _, domain = text.rpartition("@")
    return f"{local}@{domain.lower()}"  # domains are case-insensitive; local parts may not be


def _parse_int(line: int, column: str, raw: Any, *, minimum: int) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ImportRowError(line, f"{column} {_show(raw)} is not an integer")
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        if not _INT_RE.match(text):
            raise ImportRowError(line, f"{column} {_show(raw)} is not an integer")
        raw = int(text)
    if not minimum <= raw <= _MAX_INT:
        raise ImportRowError(line, f"{column} {raw} is out of range ({minimum} to {_MAX_INT})")
    return raw


def _parse_id(line: int, column: str, raw: Any) -> Any:
    value = _parse_int(line, column, raw, minimum=1)
    return _ABSENT if value is None else value


def _parse_score(line: int, column: str, raw: Any) -> Any:
    value = _parse_int(line, column, raw, minimum=-_MAX_INT)
    return _ABSENT if value is None else value


def _parse_status(line: int, column: str, raw: Any) -> Any:
    text = _clean_text(line, column, raw)
    if text is None:
        return _ABSENT
    status = text.lower()
    if status not in ("active", "inactive"):
        raise ImportRowError(line, f"status {_show(text)} must be active or inactive")
    return status


def _parse_birth_date(line: int, column: str, raw: Any) -> Any:
    text = _clean_text(line, column, raw)
    if text is None:
        return None
    try:
        if not _DATE_RE.match(text):
            raise ValueError
        value = date.fromisoformat(text)
    except ValueError:
        raise ImportRowError(line, f"birth_date {_show(text)} is not a date (use YYYY-MM-DD)") from None
    # One day of slack: "today" east of UTC is already tomorrow in UTC terms.
    if value > utcnow().date() + timedelta(days=1):
        raise ImportRowError(line, f"birth_date {_show(text)} is in the future")
    return value


def _parse_datetime(line: int, column: str, raw: Any) -> Any:
    text = _clean_text(line, column, raw)
    if text is None:
        return _ABSENT
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ImportRowError(
            line, f"{column} {_show(text)} is not a date-time (use ISO 8601, e.g. 2026-01-31T12:00:00Z)"
        ) from None
    # Naive values are UTC, like everything the store keeps.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_PARSERS: dict[str, Callable[[int, str, Any], Any]] = {
    "id": _parse_id,
    "email": _parse_email,
    "birth_date": _parse_birth_date,
    "score": _parse_score,
    "status": _parse_status,
    "captured_at": _parse_datetime,
    "updated_at": _parse_datetime,
    **{column: _parse_text for column in _TEXT_COLUMNS},
}
assert set(_PARSERS) == set(LEAD_COLUMNS), "every leads column needs a parser"


def _parse_tags(line: int, raw: Any) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if isinstance(raw, str):
        items: list[Any] = raw.split(";")
    elif isinstance(raw, list):
        items = raw
    else:
        raise ImportRowError(line, "tags must be a 'a;b' text or a list of texts")
    tags: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise ImportRowError(line, f"tag {_show(item)} must be text")
        tag = item.strip()
        if not tag:
            continue
        if _CONTROL_RE.search(tag):
            raise ImportRowError(line, "tags contain a line break or control character")
        if len(tag) > MAX_TAG_LENGTH:
            raise ImportRowError(line, f"tag {_show(tag)} is longer than {MAX_TAG_LENGTH} characters")
        tags.add(tag)
    if len(tags) > MAX_TAGS:
        raise ImportRowError(line, f"{len(tags)} tags; at most {MAX_TAGS} per lead")
    return frozenset(tags)


# --- writing one chunk ----------------------------------------------------------------------------


@dataclass
class _Counts:
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


def _import_chunk(
    engine: Engine,
    rows: list[_Row],
    counts: _Counts,
    reject: Callable[[ImportRowError], None],
    *,
    label: str,
) -> None:
    before = (counts.imported, counts.updated, counts.rejected)
    with engine.begin() as conn:
        existing = _existing_leads(conn, rows)
        existing_tags = _existing_tags(conn, [k for k in existing if isinstance(k, int)])
        targets = _resolve(rows, existing, counts, reject)
        now = utcnow()
        by_id: list[dict[str, Any]] = []
        by_email: list[dict[str, Any]] = []
        write_tags: list[_Target] = []
        for target in targets.values():
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
        _upsert(conn, by_id, conflict=leads.c.id)
        if (by_id or by_email) and conn.dialect.name == "postgresql":
            _sync_id_sequence(conn)  # explicit ids do not advance the serial sequence
        _upsert(conn, [{k: v for k, v in p.items() if k != "id"} for p in by_email], conflict=leads.c.email)
        _replace_tags(conn, write_tags)
    log.info(
        "import %s: %d rows, %d new, %d updated, %d rejected",
        label,
        len(rows),
        counts.imported - before[0],
        counts.updated - before[1],
        counts.rejected - before[2],
    )


def _batches(items: list[Any], size: int = _IN_BATCH) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _existing_leads(conn: Connection, rows: list[_Row]) -> dict[Any, dict[str, Any]]:
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
    rows: list[_Row],
    existing: dict[Any, dict[str, Any]],
    counts: _Counts,
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
                reason = f"email {_show(email)} is being given up by another lead in the same batch of rows"
                reject(ImportRowError(row.line, f"{reason}; import this row again to use it"))
                continue
            holder = None  # new leads are inserted after the updates that free the email
        if "id" in row.values:
            key: tuple[str, Any] = ("id", row.values["id"])
            if holder is not None and holder != key:
                held_by = f"lead {holder[1]}" if holder[0] == "id" else "a new lead earlier in the file"
                reject(ImportRowError(row.line, f"email {_show(email)} already belongs to {held_by}"))
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
