"""The lead store: schema creation on both backends, the lead generator, the sample data."""

from __future__ import annotations

import csv
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from leadpost.store import init_db, lead_tags, leads
from leadpost.store.generate import GENERATED_COLUMNS, SAMPLE_NOW, generate_leads, write_leads
from leadpost.store.importer import import_leads

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "dags" / "sample_leads.csv"
NOW = datetime(2027, 2, 28, 15, 0, tzinfo=UTC)

CITY_STATE = {
    "São Paulo": "SP", "Campinas": "SP", "Rio de Janeiro": "RJ", "Niterói": "RJ", "Belo Horizonte": "MG",
    "Porto Alegre": "RS", "Salvador": "BA", "Curitiba": "PR", "Florianópolis": "SC", "Recife": "PE",
}  # fmt: skip
AREA_CODE = {"SP": "11", "RJ": "21", "MG": "31", "RS": "51", "BA": "71", "PR": "41", "SC": "48", "PE": "81"}

EXPECTED_TABLES = {"leads", "lead_tags", "leadpost_actions", "leadpost_deliveries"}
EXPECTED_INDEXES = {
    "leads": {"ix_leads_email", "ix_leads_captured_at"},
    "lead_tags": {"ix_lead_tags_tag_lead"},
}


def test_init_db_twice_creates_tables_and_indexes(store):
    init_db(store)
    init_db(store)  # idempotent: nothing raises, nothing doubles
    inspector = sa.inspect(store)
    assert set(inspector.get_table_names()) >= EXPECTED_TABLES
    for table, names in EXPECTED_INDEXES.items():
        assert names <= {ix["name"] for ix in inspector.get_indexes(table)}, table
    email_index = next(ix for ix in inspector.get_indexes("leads") if ix["name"] == "ix_leads_email")
    assert email_index["unique"]
    lead_columns = {c["name"] for c in inspector.get_columns("leads")}
    assert lead_columns == {
        "id", "email", "name", "birth_date", "phone", "company", "city", "state",
        "score", "status", "funnel", "captured_at", "updated_at",
    }  # fmt: skip
    assert inspector.get_pk_constraint("lead_tags")["constrained_columns"] == ["lead_id", "tag"]


def test_generator_is_deterministic():
    first = list(generate_leads(300, seed=7, now=NOW))
    assert first == list(generate_leads(300, seed=7, now=NOW))
    assert first[:100] == list(generate_leads(100, seed=7, now=NOW))
    assert first != list(generate_leads(300, seed=8, now=NOW))
    later = list(generate_leads(300, seed=7, start_id=301, now=NOW))
    assert [lead["id"] for lead in later] == list(range(301, 601))
    assert not {lead["email"] for lead in first} & {lead["email"] for lead in later}


def test_generated_leads_look_real():
    sample = list(generate_leads(2000, seed=7, now=NOW))
    n = len(sample)
    assert [lead["id"] for lead in sample] == list(range(1, n + 1))
    assert set(sample[0]) == set(GENERATED_COLUMNS)

    names = " ".join(lead["name"] for lead in sample)
    for accented in ("ã", "ç", "é", "ô", "í"):
        assert accented in names
    emails = [lead["email"] for lead in sample]
    assert len(set(emails)) == n
    assert all(email.isascii() and email.count("@") == 1 for email in emails)

    for column in ("phone", "company", "birth_date", "city"):
        missing = sum(lead[column] is None for lead in sample) / n
        assert 0.12 < missing < 0.28, (column, missing)

    for lead in sample:
        if lead["city"] in CITY_STATE and lead["state"]:
            assert lead["state"] == CITY_STATE[lead["city"]], lead
        if lead["phone"] and lead["state"] in AREA_CODE:
            assert lead["phone"].startswith(f"+55 {AREA_CODE[lead['state']]} 9"), lead
    states = Counter(lead["state"] for lead in sample)
    assert {"SP", "RJ", "MG", "RS", "BA", "PR", "SC", "PE"} <= set(states)

    tags = Counter(tag for lead in sample if lead["tags"] for tag in lead["tags"].split(";"))
    assert set(tags) == {"vip", "hot", "customer", "unsubscribed", "newsletter", "webinar"}
    assert all(0 <= lead["score"] <= 100 for lead in sample)
    assert {lead["funnel"] for lead in sample} == {"webinar-2026", "ebook-seo", "trial", None}
    inactive = sum(lead["status"] == "inactive" for lead in sample) / n
    assert 0.02 < inactive < 0.08

    captured = [datetime.fromisoformat(lead["captured_at"]) for lead in sample]
    assert all(NOW - timedelta(days=120) <= c <= NOW for c in captured)
    assert max(captured) - min(captured) > timedelta(days=100)

    births = [date.fromisoformat(lead["birth_date"]) for lead in sample if lead["birth_date"]]
    assert sum((b.month, b.day) == (2, 28) for b in births) >= 10  # NOW is 28 Feb: birthdays today
    assert sum((b.month, b.day) == (2, 29) for b in births) >= 2
    assert all(b < NOW.date() for b in births)


def test_sample_leads_file_is_the_generator_output_and_imports_cleanly(store, tmp_path):
    regenerated = tmp_path / "sample_leads.csv"
    write_leads(regenerated, 1000, seed=7, now=SAMPLE_NOW)
    assert SAMPLE.read_bytes() == regenerated.read_bytes()
    with SAMPLE.open(encoding="utf-8", newline="") as fh:
        assert [row["id"] for row in csv.DictReader(fh)] == [str(i) for i in range(1, 1001)]

    summary = import_leads(store, SAMPLE)
    assert (summary.imported, summary.updated, summary.rejected) == (1000, 0, 0)
    with store.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(leads)) == 1000
        assert conn.scalar(sa.select(sa.func.count(sa.distinct(lead_tags.c.lead_id)))) > 300
        assert conn.scalar(sa.select(sa.func.count()).where(leads.c.status == "inactive")) > 10


def test_jsonl_output_imports_cleanly(sqlite_store, tmp_path):
    path = tmp_path / "leads.jsonl"
    assert write_leads(path, 500, fmt="jsonl", start_id=5001, now=NOW) == 500
    summary = import_leads(sqlite_store, path)
    assert (summary.imported, summary.rejected) == (500, 0)
    with sqlite_store.connect() as conn:
        assert conn.scalar(sa.select(sa.func.min(leads.c.id))) == 5001


def test_streaming_import_of_50k_generated_rows(sqlite_store, tmp_path):
    path = tmp_path / "big.csv"
    started = time.perf_counter()
    write_leads(path, 50_000, seed=11)
    generated = time.perf_counter()
    summary = import_leads(sqlite_store, path)
    imported = time.perf_counter()
    print(f"generate 50k: {generated - started:.1f}s, import 50k: {imported - generated:.1f}s")
    assert (summary.imported, summary.updated, summary.rejected) == (50_000, 0, 0)
    with sqlite_store.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(leads)) == 50_000
