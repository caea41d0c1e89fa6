"""Validate one import row: every given column parsed, or an ImportRowError naming line and reason.

A row gives some of the ``leads`` columns and maybe ``tags``. Each column has a parser that
returns the stored value, or refuses the row with a reason a user can act on (``birth_date
'31/01/1990' is not a date (use YYYY-MM-DD)``). An empty value clears a nullable column; for
``id``, ``score``, ``status``, ``captured_at`` and ``updated_at`` (not nullable, with a default)
it means "not given", so the column is left out of the parsed row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from leadpost.exceptions import ImportRowError
from leadpost.store.engine import utcnow
from leadpost.store.import_file import LEAD_COLUMNS, NOT_UTF8_RE

__all__ = [
    "MAX_EMAIL_LENGTH",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "MAX_TEXT_LENGTH",
    "ParsedRow",
    "parse_row",
    "show_value",
]

MAX_TEXT_LENGTH = 1000
MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit
MAX_TAG_LENGTH = 100
MAX_TAGS = 100
_MAX_INT = 2**31 - 1  # leads.id and leads.score are 32-bit on PostgreSQL

_TEXT_COLUMNS = ("name", "phone", "company", "city", "state", "funnel")
_EMAIL_RE = re.compile(r"^[^@\s]+@([^@\s.]+\.)+[^@\s.]{2,}$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_INT_RE = re.compile(r"^[+-]?\d+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class ParsedRow:
    """One valid row of an import file.

    :param line: the row's line in the file.
    :param values: the columns this row gives, parsed (``email`` always present).
    :param tags: the row's tags; ``None`` when the row says nothing about tags.
    """

    line: int
    values: dict[str, Any]
    tags: frozenset[str] | None


# A parser's answer for "not given": the column stays out of the row (see the module docstring).
_ABSENT = object()


def show_value(value: Any, limit: int = 40) -> str:
    """A value for a rejection reason, shortened so huge inputs do not flood the report.

    :param value: the value as read.
    :param limit: at most this many characters of a text are shown.
    """
    if isinstance(value, str) and len(value) > limit:
        return repr(value[: limit - 1] + "…")
    return repr(value)


def parse_row(line: int, record: Mapping[str, Any]) -> ParsedRow:
    """Parse every column ``record`` gives.

    :param line: the row's line in the file (for the error).
    :param record: ``{column: value}`` as read from the file.
    :raises ImportRowError: the first problem found.
    """
    for column, raw in record.items():
        if isinstance(raw, str) and NOT_UTF8_RE.search(raw):
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
    return ParsedRow(line, values, tags)


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
        raise ImportRowError(line, f"invalid email {show_value(text)}")
    local, _, domain = text.rpartition("@")
    return f"{local}@{domain.lower()}"  # domains are case-insensitive; local parts may not be


def _parse_int(line: int, column: str, raw: Any, *, minimum: int) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ImportRowError(line, f"{column} {show_value(raw)} is not an integer")
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        if not _INT_RE.match(text):
            raise ImportRowError(line, f"{column} {show_value(raw)} is not an integer")
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
        raise ImportRowError(line, f"status {show_value(text)} must be active or inactive")
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
        raise ImportRowError(line, f"birth_date {show_value(text)} is not a date (use YYYY-MM-DD)") from None
    # One day of slack: "today" east of UTC is already tomorrow in UTC terms.
    if value > utcnow().date() + timedelta(days=1):
        raise ImportRowError(line, f"birth_date {show_value(text)} is in the future")
    return value


def _parse_datetime(line: int, column: str, raw: Any) -> Any:
    text = _clean_text(line, column, raw)
    if text is None:
        return _ABSENT
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ImportRowError(
            line, f"{column} {show_value(text)} is not a date-time (use ISO 8601, e.g. 2026-01-31T12:00:00Z)"
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
            raise ImportRowError(line, f"tag {show_value(item)} must be text")
        tag = item.strip()
        if not tag:
            continue
        if _CONTROL_RE.search(tag):
            raise ImportRowError(line, "tags contain a line break or control character")
        if len(tag) > MAX_TAG_LENGTH:
            raise ImportRowError(line, f"tag {show_value(tag)} is longer than {MAX_TAG_LENGTH} characters")
        tags.add(tag)
    if len(tags) > MAX_TAGS:
        raise ImportRowError(line, f"{len(tags)} tags; at most {MAX_TAGS} per lead")
    return frozenset(tags)
