"""Trigger filters select exactly the expected leads, in one SQL query, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from leadpost.config import Filters
from leadpost.filters import compile_filters, register_sqlite_functions, select_matching_ids
from leadpost.store import lead_tags, leads

SP = "America/Sao_Paulo"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


_COLUMNS = (
    "id",
    "tags",
    "score",
    "funnel",
    "state",
    "city",
    "company",
    "captured_at",
    "birth_date",
    "status",
)
# Hand-made leads. São Paulo is UTC-3 all year, so 01:00 UTC on Tuesday is Monday 22:00 there.
_ROWS = [
    (1, "vip customer", 10, "webinar-2026", "SP", "São Paulo", "Acme", "2026-03-03 01:00", "1990-02-28"),
    (2, "hot", 50, "ebook-seo", "RJ", "Rio de Janeiro", "Beta", "2026-03-03 15:00", "1988-02-29"),
    (3, "customer unsubscribed", 0, "trial", "SP", "Campinas", None, "2026-03-02 12:00", None),
    (4, "", 100, None, "MG", "Belo Horizonte", "Acme", "2026-03-08 02:30", "2000-03-01"),
    # Midnight Wednesday in São Paulo, exactly.
    (5, "vip hot customer", 75, "webinar-2026", "sp", "São Paulo", "Gamma", "2026-03-04 03:00", "1995-12-25"),
    # Inactive: fits nearly every filter, must never be selected.
    (6, "vip hot customer", 90, "webinar-2026", "SP", "São Paulo", "Acme", "2026-03-03 15:00", "1990-02-28",
     "inactive"),
    (7, "newsletter", 30, "trial", None, None, None, "2026-03-06 23:30", "1975-02-28"),
]  # fmt: skip
LEADS: list[dict[str, Any]] = [
    dict(zip(_COLUMNS, (*row, "active")[: len(_COLUMNS)], strict=True)) for row in _ROWS
]
for _lead in LEADS:
    _lead["email"] = f"lead{_lead['id']}@example.com"
    _lead["tags"] = _lead["tags"].split()
    _lead["captured_at"] = _at(_lead["captured_at"])
    _lead["updated_at"] = _lead["captured_at"]
    _lead["birth_date"] = date.fromisoformat(_lead["birth_date"]) if _lead["birth_date"] else None
ACTIVE = {1, 2, 3, 4, 5, 7}

# (case id, filters, timezone, today, expected lead ids)
CASES: list[tuple[str, dict[str, Any], str, date | None, set[int]]] = [
    ("no filters: every active lead", {}, "UTC", None, ACTIVE),
    ("tags_any one", {"tags_any": ["vip"]}, "UTC", None, {1, 5}),
    ("tags_any several", {"tags_any": ["vip", "hot"]}, "UTC", None, {1, 2, 5}),
    ("tags_any as a single value", {"tags_any": "hot"}, "UTC", None, {2, 5}),
    ("tags_all one", {"tags_all": ["customer"]}, "UTC", None, {1, 3, 5}),
    ("tags_all two", {"tags_all": ["vip", "customer"]}, "UTC", None, {1, 5}),
    ("tags_all three", {"tags_all": ["vip", "hot", "customer"]}, "UTC", None, {5}),
    ("tags_none one", {"tags_none": ["unsubscribed"]}, "UTC", None, {1, 2, 4, 5, 7}),
    ("tags_none two", {"tags_none": ["vip", "hot"]}, "UTC", None, {3, 4, 7}),
    ("tags_any unknown tag", {"tags_any": ["nobody"]}, "UTC", None, set()),
    (
        "tags any+all+none",
        {"tags_any": ["vip", "hot"], "tags_all": ["customer"], "tags_none": ["unsubscribed"]},
        "UTC",
        None,
        {1, 5},
    ),
    ("score eq", {"score": {"eq": 0}}, "UTC", None, {3}),
    ("score gt", {"score": {"gt": 50}}, "UTC", None, {4, 5}),
    ("score gte", {"score": {"gte": 50}}, "UTC", None, {2, 4, 5}),
    ("score lt", {"score": {"lt": 10}}, "UTC", None, {3}),
    ("score lte", {"score": {"lte": 10}}, "UTC", None, {1, 3}),
    ("score range", {"score": {"gte": 10, "lte": 50}}, "UTC", None, {1, 2, 7}),
    ("funnel value", {"funnel": "webinar-2026"}, "UTC", None, {1, 5}),
    ("funnel list", {"funnel": ["trial", "ebook-seo"]}, "UTC", None, {2, 3, 7}),
    ("state value is exact (SP is not sp)", {"state": "SP"}, "UTC", None, {1, 3}),
    ("state list", {"state": ["SP", "RJ"]}, "UTC", None, {1, 2, 3}),
    ("state lower case", {"state": ["sp"]}, "UTC", None, {5}),
    ("city with accent", {"city": "São Paulo"}, "UTC", None, {1, 5}),
    ("city without accent is another city", {"city": "Sao Paulo"}, "UTC", None, set()),
    ("city list", {"city": ["Campinas", "Belo Horizonte"]}, "UTC", None, {3, 4}),
    ("company value", {"company": "Acme"}, "UTC", None, {1, 4}),
    ("company list", {"company": ["Beta", "Gamma"]}, "UTC", None, {2, 5}),
    ("weekday mon UTC", {"captured_weekday": ["mon"]}, "UTC", None, {3}),
    ("weekday tue UTC", {"captured_weekday": ["tue"]}, "UTC", None, {1, 2}),
    ("weekday mon+tue UTC", {"captured_weekday": ["mon", "tue"]}, "UTC", None, {1, 2, 3}),
    ("weekday wed UTC", {"captured_weekday": ["wed"]}, "UTC", None, {5}),
    ("weekday sat UTC", {"captured_weekday": ["sat"]}, "UTC", None, set()),
    ("weekday sun UTC", {"captured_weekday": ["sunday"]}, "UTC", None, {4}),
    ("weekday mon São Paulo (01:00 UTC Tue is Mon)", {"captured_weekday": ["mon"]}, SP, None, {1, 3}),
    ("weekday tue São Paulo", {"captured_weekday": ["tue"]}, SP, None, {2}),
    ("weekday wed São Paulo at local midnight", {"captured_weekday": ["wed"]}, SP, None, {5}),
    ("weekday sat São Paulo", {"captured_weekday": ["sat"]}, SP, None, {4}),
    ("weekday sun São Paulo", {"captured_weekday": ["sun"]}, SP, None, set()),
    ("weekday fri São Paulo", {"captured_weekday": ["fri"]}, SP, None, {7}),
    ("weekday sat Tokyo (Fri 23:30 UTC)", {"captured_weekday": ["sat"]}, "Asia/Tokyo", None, {7}),
    (
        "birthday 28 Feb common year includes 29 Feb",
        {"birthday_today": True},
        "UTC",
        date(2027, 2, 28),
        {1, 2, 7},
    ),
    ("birthday 29 Feb leap year", {"birthday_today": True}, "UTC", date(2028, 2, 29), {2}),
    ("birthday 28 Feb leap year: not 29 Feb", {"birthday_today": True}, "UTC", date(2028, 2, 28), {1, 7}),
    ("birthday 1 Mar common year", {"birthday_today": True}, "UTC", date(2027, 3, 1), {4}),
    ("birthday christmas", {"birthday_today": True}, SP, date(2026, 12, 25), {5}),
    ("birthday false is no filter", {"birthday_today": False}, "UTC", date(2026, 12, 25), ACTIVE),
    ("captured_after aware", {"captured_after": "2026-03-04T00:00:00Z"}, "UTC", None, {4, 5, 7}),
    ("captured_after is strict", {"captured_after": "2026-03-04T03:00:00Z"}, SP, None, {4, 7}),
    ("captured_after offset", {"captured_after": "2026-03-04T00:00:00-03:00"}, "UTC", None, {4, 7}),
    ("captured_after naive in UTC", {"captured_after": "2026-03-04T00:00:00"}, "UTC", None, {4, 5, 7}),
    ("captured_after naive in São Paulo", {"captured_after": "2026-03-04T00:00:00"}, SP, None, {4, 7}),
    (
        "state + local weekday + score",
        {"state": ["SP"], "captured_weekday": ["mon"], "score": {"gte": 5}},
        SP,
        None,
        {1},
    ),
    (
        "funnel + tags + birthday",
        {"funnel": ["webinar-2026", "ebook-seo"], "tags_none": ["vip"], "birthday_today": True},
        "UTC",
        date(2027, 2, 28),
        {2},
    ),
    (
        "everything at once",
        {
            "tags_any": ["vip"],
            "tags_all": ["customer"],
            "tags_none": ["unsubscribed"],
            "score": {"gt": 5, "lt": 80},
            "funnel": "webinar-2026",
            "state": ["SP", "sp"],
            "city": "São Paulo",
            "company": ["Acme", "Gamma"],
            "captured_weekday": ["mon", "wed"],
            "captured_after": "2026-03-01T00:00:00",
        },
        SP,
        date(2027, 2, 28),
        {1, 5},
    ),
]


@pytest.fixture
def leads_store(store):
    """The store holding LEADS, with the SQLite weekday function wired as store/engine.py will."""
    if store.dialect.name == "sqlite":
        sa.event.listen(store, "connect", lambda dbapi_conn, _record: register_sqlite_functions(dbapi_conn))
        store.dispose()  # pooled connections predate the listener
    with store.begin() as conn:
        conn.execute(sa.insert(leads), [{k: v for k, v in lead.items() if k != "tags"} for lead in LEADS])
        conn.execute(
            sa.insert(lead_tags), [{"lead_id": lead["id"], "tag": t} for lead in LEADS for t in lead["tags"]]
        )
    return store


def _matching(engine: sa.Engine, filters: Filters, timezone: str, today: date | None) -> set[int]:
    stmt = select_matching_ids(filters, timezone=timezone, today=today, dialect_name=engine.dialect.name)
    with engine.connect() as conn:
        return set(conn.scalars(stmt))


@pytest.mark.parametrize(
    ("raw", "timezone", "today", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_filter_selects_exactly(leads_store, raw, timezone, today, expected):
    filters = Filters.model_validate(raw)
    assert _matching(leads_store, filters, timezone, today) == expected


def test_inactive_lead_never_matches_even_when_every_filter_fits(leads_store):
    # Lead 6 is inactive and fits each of these filters on its own.
    for raw in (
        {"tags_all": ["vip", "hot", "customer"]},
        {"score": {"eq": 90}},
        {"state": "SP", "company": "Acme", "city": "São Paulo", "funnel": "webinar-2026"},
    ):
        assert 6 not in _matching(leads_store, Filters.model_validate(raw), "UTC", None)
    with leads_store.begin() as conn:
        conn.execute(sa.update(leads).where(leads.c.id == 6).values(status="active"))
    assert _matching(leads_store, Filters.model_validate({"score": {"eq": 90}}), "UTC", None) == {6}


def test_birthday_defaults_to_today_in_the_trigger_timezone(leads_store):
    today_sp = datetime.now(ZoneInfo(SP)).date()
    born = today_sp.replace(year=1996) if (today_sp.month, today_sp.day) != (2, 29) else date(1996, 2, 29)
    with leads_store.begin() as conn:
        conn.execute(
            sa.insert(leads).values(
                id=8, email="born@x.com", birth_date=born, captured_at=_at("2026-01-01 00:00"),
                updated_at=_at("2026-01-01 00:00"),
            )
        )  # fmt: skip
    assert 8 in _matching(leads_store, Filters(birthday_today=True), SP, None)


def test_selection_is_one_select_statement_with_bound_values(leads_store):
    filters = Filters.model_validate(
        {
            "tags_any": ["vip", "hot"],
            "tags_all": ["customer"],
            "tags_none": ["unsubscribed"],
            "state": ["SP"],
            "captured_weekday": ["mon", "wed"],
            "birthday_today": True,
            "captured_after": "2026-03-01T00:00:00",
            "score": {"gte": 5},
        }
    )
    stmt = select_matching_ids(
        filters, timezone=SP, today=date(2027, 2, 28), dialect_name=leads_store.dialect.name
    )
    assert isinstance(stmt, sa.Select)
    assert stmt.get_final_froms() == [leads]  # tags only ever appear inside EXISTS
    sql = str(stmt.compile(dialect=leads_store.dialect))
    assert sql.startswith("SELECT leads.id \nFROM leads \nWHERE leads.status = ")
    assert "OFFSET" not in sql.upper()
    for value in ("vip", "customer", "unsubscribed", "'SP'", "America/Sao_Paulo"):
        assert value not in sql, f"{value} should be a bound parameter"

    executed: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        executed.append(statement)

    sa.event.listen(leads_store, "before_cursor_execute", record)
    try:
        with leads_store.connect() as conn:
            ids = list(conn.scalars(stmt))
    finally:
        sa.event.remove(leads_store, "before_cursor_execute", record)
    assert ids == [1]
    queries = [q for q in executed if not q.startswith("BEGIN")]  # SQLite's store engine opens explicitly
    assert len(queries) == 1  # the database did all the filtering


def test_conditions_embed_in_a_keyset_paged_query(leads_store):
    """The ledger pages with ``leads.id > :last_id ORDER BY leads.id LIMIT :n``: same leads, no gaps."""
    conditions = compile_filters(
        Filters.model_validate({"tags_none": ["unsubscribed"]}),
        timezone=SP,
        dialect_name=leads_store.dialect.name,
    )
    assert str(conditions[0].compile(dialect=leads_store.dialect)).startswith("leads.status = ")
    seen: list[int] = []
    last_id = 0
    with leads_store.connect() as conn:
        while True:
            page = list(
                conn.scalars(
                    sa.select(leads.c.id)
                    .where(*conditions, leads.c.id > last_id)
                    .order_by(leads.c.id)
                    .limit(2)
                )
            )
            if not page:
                break
            seen += page
            last_id = page[-1]
    assert seen == [1, 2, 4, 5, 7]


def test_unsupported_database_is_refused():
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        compile_filters(Filters(), dialect_name="mysql")
