"""A trigger's filters as SQL conditions on ``leads``: one query, no Python-side filtering.

:func:`compile_filters` turns :class:`~leadpost.config.Filters` into plain conditions on
``schema.leads`` columns with bound parameters, so the ledger can embed them in its own single
paged query (``leads.id > :last_id ORDER BY leads.id LIMIT :n``). The first condition is always
``status = 'active'``: inactive leads never match.

Semantics:

* ``tags_any``: the lead has at least one of the tags (``EXISTS``); ``tags_all``: every one of
  them (one ``EXISTS`` per tag); ``tags_none``: none of them (``NOT EXISTS``).
* ``score``: every given comparison holds.
* ``funnel``, ``state``, ``city``, ``company``: the value is one of the given ones, compared
  exactly (case and accents matter: ``SP`` is not ``sp``, ``São Paulo`` is not ``Sao Paulo``).
* ``captured_weekday``: the weekday of ``captured_at`` in the trigger's timezone.
* ``birthday_today``: ``birth_date`` has today's month and day (``today`` in the trigger's
  timezone); a 29 February birthday is celebrated on 28 February in common years.
* ``captured_after``: ``captured_at`` is strictly later; a naive value is read in the trigger's
  timezone.

PostgreSQL converts time zones itself (``AT TIME ZONE``). SQLite has no time zone database, so
for a zone other than UTC the weekday comes from the SQL function ``leadpost_isodow`` that
:func:`register_sqlite_functions` installs on each SQLite connection.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from leadpost.store.schema import lead_tags, leads

if TYPE_CHECKING:
    import sqlite3

    from leadpost.config import Filters

__all__ = [
    "SQLITE_ISODOW_FUNCTION",
    "compile_filters",
    "register_sqlite_functions",
    "select_matching_ids",
]

SQLITE_ISODOW_FUNCTION = "leadpost_isodow"
_ISODOW = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}
_DIALECTS = ("postgresql", "sqlite")


def compile_filters(
    filters: Filters,
    *,
    timezone: str = "UTC",
    today: date | None = None,
    dialect_name: str,
) -> list[sa.ColumnElement[bool]]:
    """The conditions a lead must meet to be selected by a trigger (to be ANDed together).

    :param filters: the trigger's filters.
    :param timezone: the trigger's IANA timezone, for weekdays, "today" and naive datetimes.
    :param today: the date birthdays are matched against; default: today in ``timezone``.
    :param dialect_name: ``postgresql`` or ``sqlite`` (``engine.dialect.name``).
    :return: conditions on ``leads`` columns, starting with ``status = 'active'``.
    """
    if dialect_name not in _DIALECTS:
        raise ValueError(f"unsupported database {dialect_name!r}; leadpost runs on {' or '.join(_DIALECTS)}")
    zone = ZoneInfo(timezone)
    conditions: list[sa.ColumnElement[bool]] = [leads.c.status == "active"]

    if filters.tags_any:
        conditions.append(_has_tag(filters.tags_any))
    # One EXISTS per tag: each probes ix_lead_tags_tag_lead, no GROUP BY needed.
    conditions.extend(_has_tag((tag,)) for tag in dict.fromkeys(filters.tags_all))
    if filters.tags_none:
        conditions.append(~_has_tag(filters.tags_none))

    if filters.score is not None:
        score = leads.c.score
        ops = (
            (filters.score.eq, score.__eq__),
            (filters.score.gt, score.__gt__),
            (filters.score.gte, score.__ge__),
            (filters.score.lt, score.__lt__),
            (filters.score.lte, score.__le__),
        )
        conditions.extend(op(value) for value, op in ops if value is not None)

    for column, values in (
        (leads.c.funnel, filters.funnel),
        (leads.c.state, filters.state),
        (leads.c.city, filters.city),
        (leads.c.company, filters.company),
    ):
        if values:
            conditions.append(column.in_(list(dict.fromkeys(values))))

    if filters.captured_weekday:
        days = sorted({_ISODOW[day] for day in filters.captured_weekday})
        conditions.append(_weekday_in(days, timezone=timezone, dialect_name=dialect_name))

    if filters.birthday_today:
        day = today or datetime.now(zone).date()
        conditions.append(_birthday_on(day, dialect_name=dialect_name))

    if filters.captured_after is not None:
        after = filters.captured_after
        if after.tzinfo is None:
            after = after.replace(tzinfo=zone)
        # Bound through UtcDateTime: UTC text on SQLite, timestamptz on PostgreSQL.
        conditions.append(leads.c.captured_at > after.astimezone(UTC))

    return conditions


def select_matching_ids(
    filters: Filters,
    *,
    timezone: str = "UTC",
    today: date | None = None,
    dialect_name: str,
) -> sa.Select[Any]:
    """``SELECT leads.id FROM leads WHERE status = 'active' AND <filters> ORDER BY leads.id``.

    :param filters: the trigger's filters.
    :param timezone: the trigger's IANA timezone.
    :param today: the date birthdays are matched against; default: today in ``timezone``.
    :param dialect_name: ``postgresql`` or ``sqlite``.
    """
    conditions = compile_filters(filters, timezone=timezone, today=today, dialect_name=dialect_name)
    return sa.select(leads.c.id).where(*conditions).order_by(leads.c.id)


def _has_tag(tags: tuple[str, ...]) -> sa.Exists:
    wanted = list(dict.fromkeys(tags))
    return sa.exists().where(lead_tags.c.lead_id == leads.c.id, lead_tags.c.tag.in_(wanted))


def _weekday_in(days: list[int], *, timezone: str, dialect_name: str) -> sa.ColumnElement[bool]:
    if dialect_name == "postgresql":
        # Always convert: the session TimeZone of the server is not ours to trust.
        local = sa.func.timezone(sa.literal(timezone, sa.Text), leads.c.captured_at)
        return sa.extract("isodow", local).in_(days)
    if timezone == "UTC":
        # Stored text is UTC already; strftime counts Sunday as 0.
        return sa.func.strftime("%w", leads.c.captured_at).in_([str(d % 7) for d in days])
    isodow = getattr(sa.func, SQLITE_ISODOW_FUNCTION)
    return isodow(leads.c.captured_at, sa.literal(timezone, sa.Text)).in_(days)


def _birthday_on(day: date, *, dialect_name: str) -> sa.ColumnElement[bool]:
    month_days = [f"{day.month:02d}-{day.day:02d}"]
    if day.month == 2 and day.day == 28 and not _is_leap(day.year):
        month_days.append("02-29")
    if dialect_name == "postgresql":
        month_day = sa.func.to_char(leads.c.birth_date, "MM-DD")
    else:
        month_day = sa.func.strftime("%m-%d", leads.c.birth_date)
    return month_day.in_(month_days)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


# --- SQLite support -----------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _sqlite_isodow(stored: str | None, timezone: str | None) -> int | None:
    """ISO weekday (Mon=1 … Sun=7) in ``timezone`` of a naive-UTC timestamp stored by SQLite."""
    if stored is None or timezone is None:
        return None
    try:
        moment = datetime.fromisoformat(stored)
        zone = _zone(timezone)
    except (ValueError, KeyError):
        return None  # an unreadable value or zone matches no weekday rather than failing the query
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(zone).isoweekday()


def register_sqlite_functions(dbapi_conn: sqlite3.Connection) -> None:
    """Install leadpost's SQL functions on a raw SQLite connection (call it from a "connect" hook).

    :param dbapi_conn: the ``sqlite3`` connection SQLAlchemy just opened.
    """
    dbapi_conn.create_function(SQLITE_ISODOW_FUNCTION, 2, _sqlite_isodow, deterministic=True)
