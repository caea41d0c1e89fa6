"""Bad input, case by case: each is refused with its place named, and nothing is sent.

Triggers files (YAML syntax, unknown keys, schemes, CR/LF, cron, timezone, ranges), auth
connections (CR/LF in header mode), and lead files (encoding, BOM, duplicate columns, huge
values, emails, dates). A few go through the real ``leadpost`` command, to check the exit code
and that stderr names the file, the line and the field a user has to fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from leadpost import cli
from leadpost.activation import run_test
from leadpost.config import load_triggers
from leadpost.dag_factory import build_dags
from leadpost.dispatch import dispatch_shard
from leadpost.exceptions import ConfigError, ImportRowError
from leadpost.ledger import Selection, Shard
from leadpost.store import leads
from leadpost.store.importer import import_leads
from tests.conftest import REPO
from tests.leads import T0

__all__: list[str] = []

URL = "{url}"  # replaced by the receiver's URL: if anything were sent, the receiver would see it


def _action(body: str = "", *, url: str = URL) -> str:
    """A triggers file with one trigger ``t`` and one action ``a``; ``body`` adds action keys."""
    return textwrap.dedent(
        """\
        triggers:
          - id: t
            actions:
              - id: a
                url: {url}
                fields: {{email: email}}
        """
    ).format(url=url) + "".join(f"        {line}\n" for line in body.splitlines())


def _trigger(body: str) -> str:
    """One trigger ``t`` whose keys are ``body``, with a valid action after them."""
    head = "triggers:\n  - id: t\n" + "".join(f"    {line}\n" for line in body.splitlines())
    return head + f"    actions:\n      - {{id: a, url: '{URL}', fields: {{email: email}}}}\n"


# (id, YAML, line, YAML path, what the message says)
CONFIG_CASES = [
    ("malformed-yaml", "triggers:\n  - id: t\n    actions: [\n      {id: a\n", 5, None, "malformed YAML"),
    ("tab-indented-yaml", "triggers:\n\t- id: t\n", 2, None, "malformed YAML"),
    ("duplicate-yaml-key", _action("batch_size: 10\nbatch_size: 20"), 8, None, "duplicate key 'batch_size'"),
    ("unknown-top-key", "trigger:\n  - id: t\n", 1, "trigger", "unknown key 'trigger' (did you mean 'triggers'?)"),
    ("unknown-trigger-key", _trigger("filter: {tags_any: [vip]}"), 3, "triggers[0].filter", "unknown key 'filter'"),
    ("unknown-action-key", _action("bach_size: 10"), 7, "triggers[0].actions[0].bach_size", "unknown key 'bach_size' (did you mean 'batch_size'?)"),
    ("unknown-lead-field", _action().replace("{email: email}", "{emial: email}"), 6, "triggers[0].actions[0].fields.emial", "unknown lead field 'emial'"),
    ("file-scheme", _action(url="file:///etc/passwd"), 5, "triggers[0].actions[0].url", "scheme 'file' is not allowed"),
    ("ftp-scheme", _action(url="ftp://ftp.example.com/leads"), 5, "triggers[0].actions[0].url", "scheme 'ftp' is not allowed"),
    ("no-scheme", _action(url="crm.example.com/post"), 5, "triggers[0].actions[0].url", "is not allowed; use http:// or https://"),
    ("query-in-url", _action(url=URL + "?token=1"), 5, "triggers[0].actions[0].url", "put static parameters under 'params'"),
    ("crlf-in-param", _action('params: {token: "abc\\r\\nX-Injected: 1"}'), 7, "triggers[0].actions[0].params.token", "control characters (CR, LF, TAB…) are not allowed"),
    ("lf-in-param", _action('params: {token: "abc\\nX-Injected: 1"}'), 7, "triggers[0].actions[0].params.token", "control characters"),
    ("crlf-in-link", "triggers:\n  - id: t\n    actions:\n      - id: a\n        link: '" + URL + "?token=a%0D%0AX-Evil:%201&email={email}'\n", 4, "triggers[0].actions[0].params.token", "control characters"),
    ("crlf-in-url", _action(url='"' + URL + '/a\\r\\nHost: evil"'), 5, "triggers[0].actions[0].url", "control characters"),
    ("invalid-cron-minute", _trigger('schedule: "61 * * * *"'), 3, "triggers[0].schedule", "invalid cron expression '61 * * * *'"),
    ("invalid-cron-fields", _trigger('schedule: "*/15 * * *"'), 3, "triggers[0].schedule", "invalid cron expression"),
    ("invalid-cron-words", _trigger('schedule: "every day"'), 3, "triggers[0].schedule", "invalid cron expression"),
    ("invalid-timezone", _trigger("timezone: Mars/Olympus"), 3, "triggers[0].timezone", "unknown timezone 'Mars/Olympus'"),
    ("invalid-timezone-path", _trigger("timezone: ../../etc/passwd"), 3, "triggers[0].timezone", "unknown timezone"),
    ("batch-size-zero", _action("batch_size: 0"), 7, "triggers[0].actions[0].batch_size", "greater than or equal to 1"),
    ("batch-size-huge", _action("batch_size: 10001"), 7, "triggers[0].actions[0].batch_size", "less than or equal to 10000"),
    ("concurrency-zero", _action("concurrency: 0"), 7, "triggers[0].actions[0].concurrency", "greater than or equal to 1"),
    ("concurrency-huge", _action("concurrency: 513"), 7, "triggers[0].actions[0].concurrency", "less than or equal to 512"),
    ("concurrency-text", _action("concurrency: many"), 7, "triggers[0].actions[0].concurrency", "valid integer"),
    ("parallelism-negative", _action("parallelism: -1"), 7, "triggers[0].actions[0].parallelism", "greater than or equal to 1"),
    ("timeout-zero", _action("timeout_s: 0"), 7, "triggers[0].actions[0].timeout_s", "greater than 0"),
]  # fmt: skip


@pytest.mark.parametrize(("yaml_text", "line", "yaml_path", "message"),
                         [pytest.param(*case[1:], id=case[0]) for case in CONFIG_CASES])  # fmt: skip
def test_a_bad_triggers_file_is_refused_with_its_place_and_sends_nothing(
    sqlite_store, receiver, tmp_path, capsys, yaml_text, line, yaml_path, message
):
    path = tmp_path / "triggers.yaml"
    path.write_text(yaml_text.replace(URL, receiver.url + "/hook"))
    place = f"{path}:{line}: " + (f"{yaml_path}: " if yaml_path else "")

    with pytest.raises(ConfigError) as exc:
        load_triggers(path)
    problems = exc.value.problems
    assert any(p.startswith(place) and message in p for p in problems), problems
    # Every action here is present; a problem inside one must not read as "no actions at all".
    assert not any("a trigger needs at least one action" in p for p in problems), problems

    with pytest.raises(ConfigError):  # no DAG at all comes out of a broken file
        build_dags(path)
    # Trying to send anyway: the command refuses and says why, before any request.
    assert cli.main(["--triggers", str(path), "test", "t.a"]) == 1
    err = capsys.readouterr().err
    assert place in err and message in err, err
    assert receiver.requests == []


def test_validate_prints_every_problem_of_a_file_with_line_and_field(tmp_path):
    path = tmp_path / "triggers.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            triggers:
              - id: a
                schedule: "61 * * * *"
                timezone: Mars/Olympus
                actions:
                  - id: x
                    url: file:///etc/passwd
                    fields: {email: email}
                    batch_size: 0
                    concurrency: 9999
                    params: {token: "a\\r\\nX-Evil: 1"}
                  - id: y
                    urll: ftp://x.com/a
                    fields: {email: email}
            """
        )
    )
    result = subprocess.run(
        [str(Path(sys.executable).with_name("leadpost")), "validate", str(path)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    expected = [
        f"{path}:3: triggers[0].schedule: invalid cron expression '61 * * * *'",
        f"{path}:4: triggers[0].timezone: unknown timezone 'Mars/Olympus'",
        f"{path}:7: triggers[0].actions[0].url: scheme 'file' is not allowed",
        f"{path}:9: triggers[0].actions[0].batch_size: ",
        f"{path}:10: triggers[0].actions[0].concurrency: ",
        f"{path}:11: triggers[0].actions[0].params.token: control characters",
        f"{path}:12: triggers[0].actions[1].url: required key is missing",
        f"{path}:13: triggers[0].actions[1].urll: unknown key 'urll' (did you mean 'url'?)",
        "8 problem(s) found",
    ]
    lines = result.stderr.splitlines()
    missing = [e for e in expected if not any(line.startswith(e) for line in lines)]
    assert missing == [], result.stderr


# --- auth connections -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("login", "password", "message"),
    [
        ("X-Api-Key\r\nX-Evil: 1", "s3cret-value", "login (key) contains CR, LF or NUL characters"),
        ("X-Api-Key", "s3cret\r\nX-Evil: 1", "password (value) contains CR, LF or NUL characters"),
        ("X-Api-Key", "s3cret\nX-Evil: 1", "password (value) contains CR, LF or NUL characters"),
        ("X-Api-Key\n", "s3cret-value", "login (key) contains CR, LF or NUL characters"),
        ("X Api Key", "s3cret-value", "login (key) 'X Api Key' is not a valid header name"),
    ],
    ids=["crlf-in-key", "crlf-in-value", "lf-in-value", "trailing-lf-in-key", "space-in-key"],
)
def test_a_header_mode_connection_with_cr_lf_is_refused_naming_it_and_sends_nothing(
    sqlite_store, receiver, tmp_path, monkeypatch, capsys, login, password, message
):
    conn = {"conn_type": "leadpost", "login": login, "password": password, "extra": {"auth_mode": "header"}}
    monkeypatch.setenv("AIRFLOW_CONN_CRM_HDR", json.dumps(conn))
    path = tmp_path / "triggers.yaml"
    path.write_text(_action("auth_conn_id: crm_hdr").replace(URL, receiver.url + "/hook"))
    trigger, action = load_triggers(path).resolve("t.a")

    with pytest.raises(ConfigError) as exc:
        run_test(sqlite_store, trigger, action)
    assert f"connection 'crm_hdr': {message}" in exc.value.problems
    assert cli.main(["--triggers", str(path), "test", "t.a"]) == 1
    err = capsys.readouterr().err
    assert f"connection 'crm_hdr': {message}" in err and "s3cret" not in err
    with pytest.raises(ConfigError):
        dispatch_shard(
            sqlite_store, Selection(trigger, action, T0.date()), Shard("t.a"), require_active=False
        )
    assert receiver.requests == []


# --- lead files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadFile:
    """A lead file, the rejections it must produce (line, reason) and the emails that get in."""

    content: bytes
    rejected: list[tuple[int, str]] = field(default_factory=list)
    imported: set[str] = field(default_factory=set)
    refused: str | None = None  # the whole file is refused with this reason (line 1)
    suffix: str = ".csv"


def _csv(*lines: str, encoding: str = "utf-8") -> bytes:
    return ("\n".join(lines) + "\n").encode(encoding)


HUGE = "x" * 5000
HUGER = "y" * 200_000  # beyond the csv module's 128 KiB field limit
LEAD_FILE_CASES = {
    "non-utf8-value": LeadFile(
        _csv("email,name", "ok1@example.com,Ana") + b"ok2@example.com,Jos\xe9\n" + _csv("ok3@example.com,Cid"),
        rejected=[(3, "name is not UTF-8 text; save the file as UTF-8")],
        imported={"ok1@example.com", "ok3@example.com"},
    ),
    "non-utf8-header": LeadFile(
        _csv("email,Cidade", encoding="utf-8") .replace(b"Cidade", b"Cidad\xe9") + _csv("ok@example.com,SP"),
        refused="the header is not UTF-8 text; save the file as UTF-8",
    ),
    "utf16-file": LeadFile(_csv("email,name", "ok@example.com,Ana", encoding="utf-16"), refused="not UTF-8"),
    "bom-accepted": LeadFile(b"\xef\xbb\xbf" + _csv("email,name", "bom@example.com,Bia"), imported={"bom@example.com"}),
    "bom-jsonl-accepted": LeadFile(
        b"\xef\xbb\xbf" + _csv('{"email": "bomj@example.com", "name": "Bia"}'), imported={"bomj@example.com"}, suffix=".jsonl"
    ),
    "duplicate-columns": LeadFile(_csv("email,name,email", "a@example.com,x,b@example.com"), refused="duplicate column(s) in the header: email"),
    "duplicate-columns-case": LeadFile(_csv("Email,name,EMAIL", "a@example.com,x,b@example.com"), refused="duplicate column(s) in the header: email"),
    "unknown-column": LeadFile(_csv("email,nome", "a@example.com,x"), refused="unknown column(s) 'nome'"),
    "huge-value": LeadFile(
        _csv("email,name,company", f"h1@example.com,{HUGE},ACME", f"h2@example.com,Ok,{HUGER}", "h3@example.com,Fine,Co"),
        rejected=[(2, "name is longer than 1000 characters"), (3, "field larger than field limit")],
        imported={"h3@example.com"},
    ),
    "huge-email": LeadFile(_csv("email", "a" * 300 + "@example.com", "ok@example.com"),
                           rejected=[(2, "email is longer than 254 characters")], imported={"ok@example.com"}),
    "invalid-emails": LeadFile(
        _csv("email,name", "not-an-email,A", "a@b,B", "two@@example.com,C", "sp ace@example.com,D",
             "ok@example.com,E", ",F"),
        rejected=[(2, "invalid email 'not-an-email'"), (3, "invalid email 'a@b'"), (4, "invalid email"),
                  (5, "invalid email"), (7, "missing email")],
        imported={"ok@example.com"},
    ),
    "invalid-dates": LeadFile(
        _csv("email,birth_date,captured_at", "d1@example.com,1990-13-45,", "d2@example.com,31/12/1990,",
             "d3@example.com,2999-01-01,", "d4@example.com,1990-01-02,yesterday",
             "d5@example.com,1990-02-30,", "d6@example.com,1990-01-02,2026-01-02T03:04:05Z"),
        rejected=[(2, "birth_date '1990-13-45' is not a date (use YYYY-MM-DD)"),
                  (3, "birth_date '31/12/1990' is not a date"), (4, "birth_date '2999-01-01' is in the future"),
                  (5, "captured_at 'yesterday' is not a date-time"), (6, "birth_date '1990-02-30' is not a date")],
        imported={"d6@example.com"},
    ),
    "line-break-in-value": LeadFile(
        _csv("email,name", 'lb@example.com,"Ana\r\nX-Evil: 1"', "ok@example.com,Bo"),
        rejected=[(2, "name contains a line break or control character")],
        imported={"ok@example.com"},
    ),
}  # fmt: skip


def _stored_emails(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(leads.c.email)).scalars())


@pytest.mark.parametrize("case", list(LEAD_FILE_CASES.values()), ids=list(LEAD_FILE_CASES))
def test_a_bad_lead_file_rejects_each_bad_row_by_line_and_none_of_them_is_ever_sent(
    sqlite_store, receiver, tmp_path, case
):
    path = tmp_path / f"leads{case.suffix}"
    path.write_bytes(case.content)
    seen: list[ImportRowError] = []

    if case.refused:
        with pytest.raises(ImportRowError) as exc:
            import_leads(sqlite_store, path, on_reject=seen.append)
        assert exc.value.line == 1 and case.refused in exc.value.reason, exc.value.reason
    else:
        summary = import_leads(sqlite_store, path, on_reject=seen.append)
        got = [(e.line, e.reason) for e in seen]
        assert [line for line, _ in got] == [line for line, _ in case.rejected], got
        for (line, reason), (_, expected) in zip(got, case.rejected, strict=True):
            assert expected in reason, f"line {line}: {reason!r} does not say {expected!r}"
            assert len(reason) < 200, "a rejection reason stays short, however big the value"
        assert (summary.imported, summary.rejected) == (len(case.imported), len(case.rejected))
    assert _stored_emails(sqlite_store) == case.imported

    # What is stored is what goes out: an active action sends the accepted leads and nothing else.
    sel = _selection(tmp_path, receiver.url + "/hook")
    assert run_test(sqlite_store, sel.trigger, sel.action).ok
    receiver.reset()
    dispatch_shard(sqlite_store, sel, Shard(sel.action_key))
    assert {r.form()["email"] for r in receiver.requests} == case.imported
    assert len(receiver.requests) == len(case.imported)


def _selection(tmp_path: Path, url: str) -> Selection:
    path = tmp_path / "triggers.yaml"
    path.write_text(_action(url=url))
    trigger, action = load_triggers(path).resolve("t.a")
    return Selection(trigger, action, T0.date())


def test_leads_import_tells_the_user_file_line_and_field_and_fails(sqlite_store, tmp_path):
    rows_file = tmp_path / "bad.csv"
    rows_file.write_bytes(LEAD_FILE_CASES["invalid-dates"].content)
    header_file = tmp_path / "dup.csv"
    header_file.write_bytes(LEAD_FILE_CASES["duplicate-columns"].content)
    exe = str(Path(sys.executable).with_name("leadpost"))
    procs = [
        subprocess.Popen([exe, "leads", "import", str(f)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for f in (rows_file, header_file)
    ]  # fmt: skip
    (rows_out, rows_err), (header_out, header_err) = (p.communicate(timeout=120) for p in procs)

    assert procs[0].returncode == 1, rows_err
    for line, reason in LEAD_FILE_CASES["invalid-dates"].rejected:
        assert f"{rows_file}: line {line}: {reason}" in rows_err, rows_err
    assert f"{rows_file}: 1 imported, 0 updated, 5 rejected" in rows_out
    assert procs[1].returncode != 0 and header_out.strip() == ""
    assert f"{header_file}: line 1: duplicate column(s) in the header: email" in header_err, header_err
