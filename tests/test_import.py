"""``leads import``: CSV and JSON Lines upserts, every rejection with its line, honest counts."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from leadpost.exceptions import ImportRowError
from leadpost.store import lead_tags, leads
from leadpost.store.importer import IMPORT_COLUMNS, ImportSummary, import_leads


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def _jsonl(*objects: Any) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n" for o in objects)


def _leads(engine: sa.Engine) -> dict[int, dict[str, Any]]:
    with engine.connect() as conn:
        return {row["id"]: dict(row) for row in conn.execute(sa.select(leads)).mappings()}


def _tags(engine: sa.Engine) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    with engine.connect() as conn:
        for lead_id, tag in conn.execute(sa.select(lead_tags.c.lead_id, lead_tags.c.tag)):
            found.setdefault(lead_id, set()).add(tag)
    return found


def _counts(summary: ImportSummary) -> tuple[int, int, int]:
    return summary.imported, summary.updated, summary.rejected


# --- loading ----------------------------------------------------------------------------------


def test_csv_import_stores_clean_values(store, tmp_path):
    path = _write(
        tmp_path,
        "leads.csv",
        "id,email,name,birth_date,phone,company,city,state,score,status,funnel,captured_at,tags\n"
        "1,Joao.Silva@Example.COM,  João da Silva  ,1990-05-17,+55 11 91234-5678,Açougue São Jorge,"
        "São Paulo,SP,42,inactive,webinar-2026,2026-03-03T01:00:00Z,vip;hot\n"
        "2,maria@example.com,Maria Conceição,,,,,,,,,2026-03-03 10:00:00,\n",
    )
    summary = import_leads(store, path)
    assert _counts(summary) == (2, 0, 0)
    assert summary.rejections == []
    stored = _leads(store)
    joao, maria = stored[1], stored[2]
    assert joao["email"] == "Joao.Silva@example.com"  # domain lower-cased, the address kept
    assert joao["name"] == "João da Silva"
    assert joao["birth_date"] == date(1990, 5, 17)
    assert (joao["phone"], joao["company"], joao["city"], joao["state"]) == (
        "+55 11 91234-5678",
        "Açougue São Jorge",
        "São Paulo",
        "SP",
    )
    assert (joao["score"], joao["status"], joao["funnel"]) == (42, "inactive", "webinar-2026")
    assert joao["captured_at"] == datetime(2026, 3, 3, 1, 0, tzinfo=UTC)
    # Empty values are NULL; score and status fall back to their defaults; naive time is UTC.
    assert [maria[c] for c in ("birth_date", "phone", "company", "city", "state", "funnel")] == [None] * 6
    assert (maria["score"], maria["status"]) == (0, "active")
    assert maria["captured_at"] == datetime(2026, 3, 3, 10, 0, tzinfo=UTC)
    assert maria["updated_at"] > datetime(2026, 12, 1, tzinfo=UTC)
    assert _tags(store) == {1: {"vip", "hot"}}


def test_jsonl_import_with_tag_lists_nulls_and_blank_lines(store, tmp_path):
    path = _write(
        tmp_path,
        "leads.jsonl",
        _jsonl(
            {
                "email": "ana@x.com.br",
                "name": "Ana Gonçalves",
                "tags": ["customer", "vip"],
                "score": 7,
            },
            "",
            {
                "email": "tonho@x.com.br",
                "name": "Antônio",
                "phone": 5511999990000,
                "company": None,
                "tags": "a;b",
            },
            "   ",
        ),
    )
    summary = import_leads(store, path)
    assert _counts(summary) == (2, 0, 0)
    by_email = {lead["email"]: lead for lead in _leads(store).values()}
    ana, tonho = by_email["ana@x.com.br"], by_email["tonho@x.com.br"]
    assert (ana["name"], ana["score"]) == ("Ana Gonçalves", 7)
    assert (tonho["phone"], tonho["company"]) == ("5511999990000", None)
    assert _tags(store) == {ana["id"]: {"customer", "vip"}, tonho["id"]: {"a", "b"}}


def test_file_with_bom_imports(store, tmp_path):
    csv_path = _write(tmp_path, "bom.csv", b"\xef\xbb\xbf" + "email,name\nbom@x.com,Conceição\n".encode())
    jsonl_path = _write(tmp_path, "bom.jsonl", b'\xef\xbb\xbf{"email": "bom2@x.com"}\n')
    assert _counts(import_leads(store, csv_path)) == (1, 0, 0)
    assert _counts(import_leads(store, jsonl_path)) == (1, 0, 0)
    assert sorted(lead["name"] or "" for lead in _leads(store).values()) == ["", "Conceição"]


# --- upserts ----------------------------------------------------------------------------------


def test_upsert_by_id_updates_given_columns_only(store, tmp_path):
    first = _write(tmp_path, "a.csv", "id,email,name,city,score\n10,old@x.com,Old Name,Recife,5\n")
    import_leads(store, first)
    second = _write(tmp_path, "b.csv", "id,email,name\n10,new@x.com,New Name\n")
    assert _counts(import_leads(store, second)) == (0, 1, 0)
    lead = _leads(store)[10]
    assert (lead["email"], lead["name"]) == ("new@x.com", "New Name")
    assert (lead["city"], lead["score"]) == ("Recife", 5)  # absent columns keep their value


def test_upsert_by_email_keeps_the_id(store, tmp_path):
    import_leads(store, _write(tmp_path, "a.csv", "id,email,name\n3,same@x.com,First\n"))
    summary = import_leads(
        store, _write(tmp_path, "b.jsonl", _jsonl({"email": "same@X.com", "name": "Second"}))
    )
    assert _counts(summary) == (0, 1, 0)
    assert {i: lead["name"] for i, lead in _leads(store).items()} == {3: "Second"}


def test_explicit_ids_and_new_leads_without_id_mix(store, tmp_path):
    """PostgreSQL's id sequence must not hand out an id a file already used."""
    import_leads(store, _write(tmp_path, "a.csv", "id,email\n5,five@x.com\n6,six@x.com\n"))
    summary = import_leads(
        store, _write(tmp_path, "b.csv", "id,email\n,auto1@x.com\n7,seven@x.com\n,auto2@x.com\n")
    )
    assert _counts(summary) == (3, 0, 0)
    stored = _leads(store)
    assert len(stored) == 5
    assert {lead["email"] for lead in stored.values()} >= {"auto1@x.com", "auto2@x.com", "seven@x.com"}
    assert stored[7]["email"] == "seven@x.com"


def test_tags_replaced_when_given_and_kept_when_absent(store, tmp_path):
    import_leads(store, _write(tmp_path, "a.csv", "id,email,tags\n1,t@x.com,vip;hot\n"))
    assert _tags(store) == {1: {"vip", "hot"}}
    import_leads(store, _write(tmp_path, "b.csv", "id,email,tags\n1,t@x.com, customer ; ;vip\n"))
    assert _tags(store) == {1: {"customer", "vip"}}
    import_leads(store, _write(tmp_path, "c.csv", "id,email,name\n1,t@x.com,No tags column\n"))
    assert _tags(store) == {1: {"customer", "vip"}}
    import_leads(store, _write(tmp_path, "d.jsonl", _jsonl({"id": 1, "email": "t@x.com", "tags": []})))
    assert _tags(store) == {}


def test_later_row_wins_within_and_across_chunks(store, tmp_path):
    path = _write(
        tmp_path,
        "dupes.csv",
        "email,name,city\nd@x.com,First,Natal\nother@x.com,Other,\nd@x.com,Second,\nd@x.com,Third,Salvador\n",
    )
    for chunk_size in (5000, 2):
        with store.begin() as conn:
            conn.execute(sa.delete(leads))
        summary = import_leads(store, path, chunk_size=chunk_size)
        assert _counts(summary) == (2, 2, 0), chunk_size
        by_email = {lead["email"]: lead for lead in _leads(store).values()}
        assert (by_email["d@x.com"]["name"], by_email["d@x.com"]["city"]) == ("Third", "Salvador")


def test_email_of_another_lead_is_refused_for_a_different_id(store, tmp_path):
    import_leads(store, _write(tmp_path, "a.csv", "id,email\n1,taken@x.com\n"))
    summary = import_leads(store, _write(tmp_path, "b.csv", "id,email\n2,taken@x.com\n3,free@x.com\n"))
    assert _counts(summary) == (1, 0, 1)
    assert str(summary.rejections[0]) == "line 2: email 'taken@x.com' already belongs to lead 1"
    assert sorted(_leads(store)) == [1, 3]


# --- idempotence and updated_at ----------------------------------------------------------------


def test_reimport_is_idempotent_and_updated_at_moves_only_on_change(store, tmp_path):
    rows = "id,email,name,tags,captured_at\n1,a@x.com,Ana,vip,2026-01-01T00:00:00Z\n2,b@x.com,Bia,,\n"
    path = _write(tmp_path, "leads.csv", rows)
    assert _counts(import_leads(store, path)) == (2, 0, 0)
    before = _leads(store)

    again = import_leads(store, path)
    assert (*_counts(again), again.unchanged) == (0, 2, 0, 2)
    assert _leads(store) == before  # nothing touched, updated_at included

    changed = _write(tmp_path, "changed.csv", rows.replace("Bia", "Beatriz"))
    summary = import_leads(store, changed)
    assert (*_counts(summary), summary.unchanged) == (0, 2, 0, 1)
    after = _leads(store)
    assert after[1]["updated_at"] == before[1]["updated_at"]
    assert after[2]["updated_at"] > before[2]["updated_at"]
    assert after[2]["captured_at"] == before[2]["captured_at"]  # not reset by the update

    # A tag change alone is a change too; an older updated_at never moves a lead back.
    tagged = _write(tmp_path, "tagged.csv", "id,email,tags,updated_at\n1,a@x.com,hot,2020-01-01T00:00:00Z\n")
    assert import_leads(store, tagged).unchanged == 0
    latest = _leads(store)
    assert latest[1]["updated_at"] > after[1]["updated_at"]


# --- rejections ---------------------------------------------------------------------------------

HEADER = "id,email,name,birth_date,score,status,captured_at"
GOOD = "1,good1@x.com,Good One,1990-01-01,1,active,2026-01-01T00:00:00Z"
GOOD_2 = "2,good2@x.com,Good Two,,,,"

# (case id, bad CSV row(s) at line 3, expected rejection)
CSV_ROW_CASES = [
    ("bad email", "3,foo@,X,,,,", "line 3: invalid email 'foo@'"),
    ("email without domain dot", "3,foo@bar,X,,,,", "line 3: invalid email 'foo@bar'"),
    ("email with space", "3,a b@x.com,X,,,,", "line 3: invalid email 'a b@x.com'"),
    ("missing email", "3,,X,,,,", "line 3: missing email"),
    (
        "bad date",
        "3,d@x.com,X,31/02/1990,,,",
        "line 3: birth_date '31/02/1990' is not a date (use YYYY-MM-DD)",
    ),
    (
        "impossible date",
        "3,d@x.com,X,1990-02-31,,,",
        "line 3: birth_date '1990-02-31' is not a date (use YYYY-MM-DD)",
    ),
    ("future birth date", "3,d@x.com,X,2999-01-01,,,", "line 3: birth_date '2999-01-01' is in the future"),
    ("bad score", "3,d@x.com,X,,abc,,", "line 3: score 'abc' is not an integer"),
    ("decimal score", "3,d@x.com,X,,1.5,,", "line 3: score '1.5' is not an integer"),
    ("score out of range", "3,d@x.com,X,,99999999999,,", "line 3: score 99999999999 is out of range"),
    ("bad status", "3,d@x.com,X,,,x,", "line 3: status 'x' must be active or inactive"),
    ("bad id", "abc,d@x.com,X,,,,", "line 3: id 'abc' is not an integer"),
    ("zero id", "0,d@x.com,X,,,,", "line 3: id 0 is out of range"),
    (
        "bad captured_at",
        "3,d@x.com,X,,,,yesterday",
        "line 3: captured_at 'yesterday' is not a date-time (use ISO 8601, e.g. 2026-01-31T12:00:00Z)",
    ),
    ("huge value", "3,d@x.com," + "x" * 1001 + ",,,,", "line 3: name is longer than 1000 characters"),
    ("huge email", "3," + "e" * 250 + "@x.com,X,,,,", "line 3: email is longer than 254 characters"),
    (
        "LF inside a value",
        '3,d@x.com,"Ana\nMaria",,,,',
        "line 3: name contains a line break",
    ),
    (
        "CR inside a value",
        '3,d@x.com,"Ana\rMaria",,,,',
        "line 3: name contains a line break",
    ),
    (
        "NUL inside a value",
        "3,d@x.com,Ana\x00,,,,",
        "line 3: name contains a line break",
    ),
    ("too few values", "3,d@x.com,X", "line 3: 3 values but the header names 7 columns"),
    ("too many values", "3,d@x.com,X,,,,,,", "line 3: 9 values but the header names 7 columns"),
    ("oversized quoted field", '3,d@x.com,"X,' + "y" * 140_000, "line 3: malformed CSV"),
]


@pytest.mark.parametrize(("bad", "reason"), [c[1:] for c in CSV_ROW_CASES], ids=[c[0] for c in CSV_ROW_CASES])
def test_csv_row_rejected_with_line_and_reason(store, tmp_path, bad, reason):
    # The good row after the bad one still goes in, even when the bad row spans two lines.
    path = _write(tmp_path, "leads.csv", f"{HEADER}\n{GOOD}\n{bad}\n{GOOD_2}\n")
    seen: list[ImportRowError] = []
    summary = import_leads(store, path, on_reject=seen.append)
    assert _counts(summary) == (2, 0, 1)
    assert sorted(_leads(store)) == [1, 2]
    assert len(summary.rejections) == 1 and seen == summary.rejections
    error = summary.rejections[0]
    assert error.line == 3
    assert str(error).startswith(reason), str(error)


def test_non_utf8_csv_row_rejected_alone(store, tmp_path):
    content = f"{HEADER}\n{GOOD}\n".encode() + b"3,d@x.com,Jo\xe3o,,,,\n" + f"{GOOD_2}\n".encode()
    summary = import_leads(store, _write(tmp_path, "latin1.csv", content))
    assert _counts(summary) == (2, 0, 1)
    assert str(summary.rejections[0]) == "line 3: name is not UTF-8 text; save the file as UTF-8"


JSONL_CASES = [
    ("invalid JSON", '{"email": "x@x.com",', "line 2: invalid JSON"),
    ("not an object", '["x@x.com"]', "line 2: expected a JSON object, got list"),
    ("unknown key", '{"email": "x@x.com", "emial": 1}', "line 2: unknown key(s) 'emial'; allowed: id, email"),
    ("duplicate key", '{"email": "x@x.com", "email": "y@x.com"}', "line 2: duplicate key 'email'"),
    ("email not text", '{"email": 12}', "line 2: invalid email '12'"),
    ("null email", '{"email": null}', "line 2: missing email"),
    ("bool score", '{"email": "x@x.com", "score": true}', "line 2: score True is not an integer"),
    ("float score", '{"email": "x@x.com", "score": 2.5}', "line 2: score 2.5 is not an integer"),
    ("name not text", '{"email": "x@x.com", "name": ["a"]}', "line 2: name must be text, not list"),
    (
        "tags not text",
        '{"email": "x@x.com", "tags": {"a": 1}}',
        "line 2: tags must be a 'a;b' text",
    ),
    ("tag not text", '{"email": "x@x.com", "tags": ["ok", 3]}', "line 2: tag 3 must be text"),
    ("escaped lone surrogate", '{"email": "x@x.com", "city": "\\udce9"}', "line 2: city is not UTF-8 text"),
    ("escaped newline", '{"email": "x@x.com", "city": "a\\nb"}', "line 2: city contains a line break"),
]


@pytest.mark.parametrize(("bad", "reason"), [c[1:] for c in JSONL_CASES], ids=[c[0] for c in JSONL_CASES])
def test_jsonl_row_rejected_with_line_and_reason(store, tmp_path, bad, reason):
    path = _write(tmp_path, "leads.jsonl", _jsonl({"email": "first@x.com"}, bad, {"email": "last@x.com"}))
    summary = import_leads(store, path)
    assert _counts(summary) == (2, 0, 1)
    assert str(summary.rejections[0]).startswith(reason), str(summary.rejections[0])


def test_non_utf8_jsonl_line_rejected_alone(store, tmp_path):
    content = b'{"email": "a@x.com"}\n{"email": "b@x.com", "name": "Jo\xe3o"}\n{"email": "c@x.com"}\n'
    summary = import_leads(store, _write(tmp_path, "latin1.jsonl", content))
    assert _counts(summary) == (2, 0, 1)
    assert str(summary.rejections[0]) == "line 2: not UTF-8 text (byte 0xE3 at column 33)"


FILE_CASES = [
    (
        "unknown column",
        b"email,emial,foo\na@x.com,b,c\n",
        "line 1: unknown column(s) 'emial', 'foo'; allowed: " + ", ".join(IMPORT_COLUMNS),
    ),
    ("duplicate column", b"id,email,name,Email\n", "line 1: duplicate column(s) in the header: email"),
    ("nameless column", b"email,,name\n", "line 1: column(s) 2 of the header have no name"),
    ("no email column", b"id,name\n1,Ana\n", "line 1: the header has no 'email' column"),
    ("header not UTF-8", b"email,n\xe3me\n", "line 1: the header is not UTF-8 text"),
    ("empty file", b"", "line 1: the file is empty"),
]


@pytest.mark.parametrize(("content", "reason"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_csv_file_refused_as_a_whole(store, tmp_path, content, reason):
    path = _write(tmp_path, "bad.csv", content)
    with pytest.raises(ImportRowError) as caught:
        import_leads(store, path)
    assert str(caught.value).startswith(reason), str(caught.value)
    assert _leads(store) == {}


def test_unsupported_file_type_refused(store, tmp_path):
    with pytest.raises(ValueError, match=r"unsupported file type '\.xlsx'; use \.csv or \.jsonl"):
        import_leads(store, _write(tmp_path, "leads.xlsx", b"email\n"))


def test_counts_add_up_and_rejections_are_capped(store, tmp_path):
    lines = ["email,score"]
    for i in range(1500):
        lines.append(f"ok{i}@x.com,{i}" if i % 3 == 0 else f"bad{i}@x.com,not-a-number")
    lines.append("ok0@x.com,5")  # matches the first row: an update
    path = _write(tmp_path, "many.csv", "\n".join(lines) + "\n")
    seen: list[ImportRowError] = []
    summary = import_leads(store, path, chunk_size=128, on_reject=seen.append)
    assert _counts(summary) == (500, 1, 1000)
    assert summary.rows == 1501
    assert len(seen) == 1000 and summary.rejections == seen

    more = "email\n" + "".join(f"bad{i}@\n" for i in range(1200))
    summary = import_leads(store, _write(tmp_path, "worse.csv", more), on_reject=seen.append)
    assert summary.rejected == 1200
    assert len(summary.rejections) == 1000  # the report keeps the first 1000 …
    assert summary.rejections[-1].line == 1001
    assert len(seen) == 2200  # … the callback hears about every one


def test_emails_moving_between_leads(store, tmp_path):
    import_leads(store, _write(tmp_path, "a.csv", "id,email\n1,a@x.com\n2,b@x.com\n"))
    # Lead 1 gives up a@ and a new lead takes it, in one file.
    summary = import_leads(store, _write(tmp_path, "b.csv", "id,email\n1,c@x.com\n,a@x.com\n"))
    assert _counts(summary) == (1, 1, 0)
    emails = {lead["email"]: i for i, lead in _leads(store).items()}
    assert emails["c@x.com"] == 1 and emails["a@x.com"] not in (1, 2)

    # Another existing lead taking an email freed in the same batch must wait for the next import.
    swap = _write(tmp_path, "c.csv", "id,email\n2,d@x.com\n1,b@x.com\n")
    summary = import_leads(store, swap)
    assert _counts(summary) == (0, 1, 1)
    assert str(summary.rejections[0]).startswith("line 3: email 'b@x.com' is being given up by another lead")
    assert _counts(import_leads(store, swap)) == (0, 2, 0)
    assert {i: lead["email"] for i, lead in _leads(store).items() if i <= 2} == {1: "b@x.com", 2: "d@x.com"}
