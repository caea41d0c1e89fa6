"""Secrets and lead data stay where they belong; requests only go where they are allowed.

* A full ``dag.test()`` run with one action per auth mode (basic, header, query, bearer, hmac),
  each holding a canary secret: the receiver gets every secret, and no log (captured records,
  stdout/stderr, task log files), XCom value, leadpost table or CLI output ever shows one.
  A distinctive lead's email and name never show in INFO logs either.
* A hostile receiver echoing the secret back (error bodies, redirects) gets it masked in test
  reports, ledger errors, CLI output and exception messages.
* SSRF: metadata, private and (when not allowed) loopback targets are refused before any
  connection is attempted; redirects are never followed.

No test here sends anything outside 127.0.0.1: a process-wide audit hook records every
``socket.connect`` while these tests run, and refuses any that is not to loopback.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook

from leadpost import cli
from leadpost.activation import run_test
from leadpost.config import load_triggers
from leadpost.dag_factory import build_dags
from leadpost.dispatch import dispatch_shard
from leadpost.exceptions import ConfigError
from leadpost.hook import LeadPostHook
from leadpost.ledger import Selection, Shard, count_deliveries, get_action_state
from leadpost.states import ActionStatus, DeliveryState
from leadpost.store import metadata
from tests.conftest import REPO
from tests.leads import T0, add_leads, ledger_rows
from tests.receiver import Receiver, Reply

__all__: list[str] = []

TRIGGER = "sec"
RUN_TAG = uuid.uuid4().hex[:12]
# A character that URL-encoding changes, so the encoded form is a separate thing to look for.
PLAIN = {mode: f"cnry+{mode}-{RUN_TAG}" for mode in ("basic", "header", "query", "bearer")}
HMAC_KEY = f"cnry-hmac-key-{RUN_TAG}".encode()
HMAC_SECRET = "whsec_" + base64.b64encode(HMAC_KEY).decode()
LOGINS = {"basic": "crm_user", "header": "X-Api-Key", "query": "api_key", "bearer": None, "hmac": None}
SECRETS = {**PLAIN, "hmac": HMAC_SECRET}
PII_EMAIL = f"quokka.{RUN_TAG}@pii-canary.example"
PII_NAME = f"Zyxwvuts Quokkaberg {RUN_TAG}"
PII_ID = 7


def _forms(mode: str) -> set[str]:
    """Every shape a mode's secret can take on the way out (raw, URL-encoded, Basic, hmac key)."""
    value = SECRETS[mode]
    forms = {value, quote_plus(value), quote(value, safe="")}
    if mode == "basic":
        forms.add(base64.b64encode(f"{LOGINS['basic']}:{value}".encode()).decode())
    if mode == "hmac":
        forms |= {value.removeprefix("whsec_"), HMAC_KEY.decode()}
    return forms


ALL_FORMS = {form: mode for mode in SECRETS for form in _forms(mode)}


def _leaks(text: str) -> list[str]:
    """The secret forms found in ``text``, named by mode (never the secret itself)."""
    return sorted({f"{ALL_FORMS[form]} ({'raw' if form == SECRETS[ALL_FORMS[form]] else 'encoded'})"
                   for form in ALL_FORMS if form in text})  # fmt: skip


def _pii(text: str) -> list[str]:
    return [name for name, value in (("email", PII_EMAIL), ("name", PII_NAME)) if value in text]


# --- tripwire: nothing leaves 127.0.0.1 ---------------------------------------------------------

_CONNECTS: list[str] = []
_ARMED = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _ARMED or event != "socket.connect":
        return
    sock, address = args
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    host = address[0]
    _CONNECTS.append(host)
    if not ipaddress.ip_address(host.split("%", 1)[0]).is_loopback:
        raise ConnectionRefusedError(f"test tripwire: a connection to {host} was attempted")


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[list[str]]:
    """Record every TCP connect of this process during the test; refuse any off loopback."""
    global _ARMED
    _CONNECTS.clear()
    _ARMED = True
    try:
        yield _CONNECTS
    finally:
        _ARMED = False
    outside = [h for h in _CONNECTS if not ipaddress.ip_address(h.split("%", 1)[0]).is_loopback]
    assert outside == [], f"connections attempted outside loopback: {outside}"


# --- helpers ----------------------------------------------------------------------------------


def _set_connection(
    monkeypatch, conn_id: str, *, mode: str, login: str | None, password: str, **extra
) -> None:
    conn = {
        "conn_type": "leadpost",
        "login": login,
        "password": password,
        "extra": {"auth_mode": mode, **extra},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def _set_all_connections(monkeypatch) -> None:
    for mode in SECRETS:
        _set_connection(monkeypatch, f"sec_{mode}", mode=mode, login=LOGINS[mode], password=SECRETS[mode])


def _write_triggers(path: Path, url: str, *, auto_test: bool) -> Path:
    actions = []
    for mode in SECRETS:
        method = "GET" if mode == "query" else "POST"  # GET: the secret and the lead sit in the URL
        actions.append(
            f"""
              - id: {mode}
                url: {url}/{mode}
                method: {method}
                fields: {{email: email, name: nome}}
                auth_conn_id: sec_{mode}
                parallelism: 1
                auto_test: {str(auto_test).lower()}"""
        )
    text = f"""
        triggers:
          - id: {TRIGGER}
            schedule: null
            actions:{"".join(actions)}
        """
    path.write_text(textwrap.dedent(text))
    return path


def _add_pii_leads(engine: sa.Engine) -> None:
    add_leads(engine, PII_ID - 1)
    add_leads(engine, 1, start=PII_ID, email=PII_EMAIL, name=PII_NAME)


def _check_auth_on_the_wire(receiver: Receiver) -> None:
    """The receiver got each secret where its mode puts it (masking is for people, not the wire)."""
    seen = {mode: [r for r in receiver.requests if r.path == f"/{mode}"] for mode in SECRETS}
    for mode, recs in seen.items():
        assert recs, f"no request reached /{mode}"
        for rec in recs:
            if mode == "basic":
                token = base64.b64encode(f"crm_user:{SECRETS['basic']}".encode()).decode()
                assert rec.header("Authorization") == f"Basic {token}"
            elif mode == "header":
                assert rec.header("X-Api-Key") == SECRETS["header"]
            elif mode == "query":
                assert rec.query_dict()["api_key"] == SECRETS["query"]
            elif mode == "bearer":
                assert rec.header("Authorization") == f"Bearer {SECRETS['bearer']}"
            else:
                Webhook(HMAC_SECRET).verify(rec.body, dict(rec.headers), json_parse=False)


def _table_text(engine: sa.Engine) -> str:
    """Every value of every table in the lead store, as text."""
    chunks = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                chunks.append(f"{table.name}: " + " | ".join(str(v) for v in row))
    return "\n".join(chunks)


def _xcom_text(dag_id: str, run_id: str) -> str:
    from airflow.settings import engine as airflow_engine

    with airflow_engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT task_id, map_index, key, value FROM xcom WHERE dag_id = :d AND run_id = :r"),
            {"d": dag_id, "r": run_id},
        ).all()
    return "\n".join(" | ".join(str(v) for v in row) for row in rows)


def _task_log_text(home: Path) -> tuple[str, int]:
    files = [p for p in (home / "logs").rglob("*") if p.is_file()] if (home / "logs").exists() else []
    return "\n".join(p.read_text(errors="replace") for p in files), len(files)


def _cli(*argv: str) -> subprocess.Popen:
    """The real ``leadpost`` command in its own process (same environment, connections included)."""
    exe = Path(sys.executable).with_name("leadpost")
    return subprocess.Popen(
        [str(exe), *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def _done(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out + err


# --- a full DAG run in every auth mode ----------------------------------------------------------


def test_a_dag_run_in_every_auth_mode_shows_no_secret_anywhere_and_no_lead_data_at_info(
    airflow_db, sqlite_store, receiver, tmp_path, monkeypatch, caplog, capfd
):
    from airflow.utils.state import DagRunState

    _set_all_connections(monkeypatch)
    path = _write_triggers(tmp_path / "triggers.yaml", receiver.url, auto_test=True)
    monkeypatch.setenv("LEADPOST_TRIGGERS", str(path))
    _add_pii_leads(sqlite_store)
    caplog.set_level(logging.DEBUG)

    dag = build_dags(path)[f"leadpost_{TRIGGER}"]
    run = dag.test()

    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert run.state == DagRunState.SUCCESS, states
    # Each action: its test execution, then the seven leads.
    assert {mode: sum(r.path == f"/{mode}" for r in receiver.requests) for mode in SECRETS} == dict.fromkeys(
        SECRETS, 1 + PII_ID
    )
    _check_auth_on_the_wire(receiver)
    pii_on_wire = [r for r in receiver.requests if PII_EMAIL in {**r.form(), **r.query_dict()}.values()]
    assert len(pii_on_wire) == len(SECRETS), "the distinctive lead must really have been sent"

    # The CLI, in its own processes, after the run.
    status_proc = _cli("status")
    test_proc = _cli("test", f"{TRIGGER}.query", "--lead", str(PII_ID))
    (status_rc, status_out), (test_rc, test_out) = _done(status_proc), _done(test_proc)
    assert status_rc == 0 and f"{TRIGGER}.hmac" in status_out, status_out
    assert test_rc == 0 and "PASSED" in test_out and "api_key=***" in test_out, test_out

    captured = capfd.readouterr()
    logs, n_files = _task_log_text(airflow_db)
    places = {
        "log records": caplog.text,
        "stdout/stderr": captured.out + captured.err,
        f"task log files ({n_files})": logs,
        "XCom": _xcom_text(dag.dag_id, run.run_id),
        "lead store tables": _table_text(sqlite_store),
        "leadpost status": status_out,
        "leadpost test": test_out,
    }
    leaks = {place: found for place, text in places.items() if (found := _leaks(text))}
    assert all(places[p] for p in ("log records", "stdout/stderr", "XCom", "lead store tables")), (
        "nothing scanned"
    )
    assert leaks == {}, f"secrets found in: {leaks}"

    info = [r for r in caplog.records if r.levelno >= logging.INFO]
    info_text = "\n".join(f"{r.name}: {r.getMessage()}" for r in info)
    pii = {
        place: found
        for place, text in {
            "INFO log records": info_text,
            "stdout/stderr": captured.out + captured.err,
            "task log files": logs,
            "XCom": places["XCom"],
            "leadpost status": status_out,
        }.items()
        if (found := _pii(text))
    }
    assert pii == {}, f"lead data found in: {pii}"
    assert any("delivered" in r.getMessage() for r in info), "the run did log its counts at INFO"


# --- a hostile receiver echoing the secret --------------------------------------------------------


@pytest.mark.parametrize("mode", list(SECRETS))
def test_a_receiver_echoing_the_secret_gets_it_masked_in_reports_ledger_cli_and_errors(
    sqlite_store, receiver, tmp_path, monkeypatch, caplog, capfd, mode
):
    _set_all_connections(monkeypatch)
    path = _write_triggers(tmp_path / "triggers.yaml", receiver.url, auto_test=False)
    monkeypatch.setenv("LEADPOST_TRIGGERS", str(path))
    caplog.set_level(logging.DEBUG)
    add_leads(sqlite_store, 4)
    trigger, action = load_triggers(path).resolve(f"{TRIGGER}.{mode}")
    sel = Selection(trigger, action, T0.date())
    secret = SECRETS[mode]
    echo = f"token {secret} / {quote_plus(secret)} refused".encode()
    texts: list[str] = []

    # The test execution: refused with the secret in the body, then redirected with it in Location.
    receiver.script(
        Reply(status=401, body=echo),
        Reply(status=302, body=echo, headers={"Location": f"{receiver.url}/moved?t={quote_plus(secret)}"}),
        Reply(status=200, body=b"welcome " + echo),
    )
    assert cli.main(["test", f"{TRIGGER}.{mode}"]) == 1
    assert cli.main(["test", f"{TRIGGER}.{mode}", "--json"]) == 1
    assert cli.main(["test", f"{TRIGGER}.{mode}"]) == 0
    for outcome_status in (401, 302):
        assert any(r.status == outcome_status for r in receiver.requests)

    # Dispatch: one lead refused with the echo, one failing with it, one redirected, one delivered.
    receiver.script(
        Reply(status=422, body=echo),
        Reply(status=500, body=echo),
        Reply(status=302, body=b"", headers={"Location": f"/x?t={quote_plus(secret)}"}),
    )
    # No in-run retries (budget 0 s): the 500 and its echo stay in the ledger as the last error.
    report = dispatch_shard(sqlite_store, sel, Shard(sel.action_key, 0, 1), run_budget_s=0)
    assert (report.delivered, report.dead, report.retrying) == (1, 2, 1), report
    texts += [json.dumps(report.as_dict()), repr(report)]
    texts += [str(r) for r in ledger_rows(sqlite_store, sel.action_key).values()]

    # 401 during dispatch: the action goes failing, with a reason that must not carry the secret.
    receiver.script(Reply(status=401, body=echo))
    add_leads(sqlite_store, 2, start=5)
    stopped = dispatch_shard(sqlite_store, sel, Shard(sel.action_key, 0, 1))
    assert stopped.stopped and "credentials" in stopped.stopped
    fingerprint = action.fingerprint(
        auth_digest=LeadPostHook(action, action_key=sel.action_key).auth_digest()
    )
    state = get_action_state(sqlite_store, sel.action_key, fingerprint=fingerprint)
    assert state.status is ActionStatus.FAILING
    texts += [stopped.stopped, str(state)]
    assert cli.main(["status"]) == 0
    assert cli.main(["status", "--json"]) == 0
    assert cli.main(["deadletters", f"{TRIGGER}.{mode}"]) == 0

    # Exceptions: a connection with an extra carrying the secret, and one with a bad value.
    _set_connection(monkeypatch, f"sec_{mode}", mode=mode, login=LOGINS[mode], password=secret, token=secret)
    with pytest.raises(ConfigError) as bad_extra:
        LeadPostHook(action, action_key=sel.action_key).build_request({"id": 1, "email": "a@b.co"})
    _set_connection(
        monkeypatch, f"sec_{mode}", mode=mode, login=LOGINS[mode] or "k", password=secret + "\r\nX: 1"
    )
    with pytest.raises(ConfigError) as bad_value:
        run_test(sqlite_store, trigger, action)
    texts += [str(bad_extra.value), repr(bad_extra.value), str(bad_value.value), repr(bad_value.value)]
    assert "unknown field(s) 'token'" in str(bad_extra.value)
    assert "contains CR, LF or NUL" in str(bad_value.value)

    captured = capfd.readouterr()
    texts += [caplog.text, captured.out, captured.err, _table_text(sqlite_store)]
    assert "***" in captured.out, "the echoed secret is shown masked"
    leaks = _leaks("\n".join(texts))
    assert leaks == [], f"{mode}: secret shown in reports, ledger, CLI output or errors: {leaks}"


# --- SSRF ---------------------------------------------------------------------------------------


def _one_action(tmp_path: Path, url: str) -> tuple[Any, Any]:
    path = tmp_path / "ssrf.yaml"
    path.write_text(
        f"triggers:\n  - id: s\n    actions:\n      - {{id: a, url: '{url}', fields: {{email: email}}}}\n"
    )
    return load_triggers(path).resolve("s.a")


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://10.0.0.1/crm", "private"),
        ("http://[fd00:ec2::254]/latest/", "cloud metadata"),
        ("localhost", "loopback"),
    ],
)
def test_a_test_execution_to_a_forbidden_target_is_refused_before_connecting(
    sqlite_store, receiver, tmp_path, monkeypatch, loopback_only, target, reason
):
    if target == "localhost":
        target = f"http://localhost:{receiver.port}/hook"
        monkeypatch.setenv("AIRFLOW__LEADPOST__ALLOWED_NETWORKS", "")
    trigger, action = _one_action(tmp_path, target)
    add_leads(sqlite_store, 3)

    report = run_test(sqlite_store, trigger, action)

    assert not report.ok and report.status is ActionStatus.UNTESTED
    assert "refusing to connect" in report.message and reason in report.message, report.message
    assert "AIRFLOW__LEADPOST__ALLOWED_NETWORKS" in report.message and "allowed_networks" in report.hint
    assert loopback_only == [] and receiver.requests == [], "refused before any connection"
    # The action never became active: the gate passes nothing and its leads stay pending.
    sel = Selection(trigger, action, T0.date())
    assert get_action_state(sqlite_store, sel.action_key, fingerprint=action.fingerprint()).status is (
        ActionStatus.UNTESTED
    )
    assert count_deliveries(sqlite_store, sel).pending == 3


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_an_endpoint_that_stops_being_allowed_sends_nothing_and_keeps_its_leads(
    sqlite_store, receiver, tmp_path, monkeypatch, loopback_only, host
):
    """An active action whose target is no longer allowed (the operator narrowed allowed_networks):
    the run stops before connecting, the action goes failing, every lead stays pending. A host
    name and a literal address are the same target and must end the same way."""
    trigger, action = _one_action(tmp_path, f"http://{host}:{receiver.port}/hook")
    assert run_test(sqlite_store, trigger, action).ok  # allowed by the test setting
    receiver.reset()
    add_leads(sqlite_store, 5)
    monkeypatch.setenv("AIRFLOW__LEADPOST__ALLOWED_NETWORKS", "")
    loopback_only.clear()
    sel = Selection(trigger, action, T0.date())

    report = dispatch_shard(sqlite_store, sel, Shard(sel.action_key))

    assert report.stopped and f"refusing to connect to '{host}'" in report.stopped, report.stopped
    assert receiver.requests == [] and loopback_only == [], "refused before connecting"
    counts = count_deliveries(sqlite_store, sel)
    assert (counts.pending, counts.delivered, counts.dead, counts.in_flight) == (5, 0, 0, 0), counts
    assert get_action_state(sqlite_store, sel.action_key, fingerprint=action.fingerprint()).status is (
        ActionStatus.FAILING
    )


def test_the_cli_test_of_a_metadata_target_fails_saying_it_is_not_allowed(
    tmp_path, sqlite_store, monkeypatch
):
    path = tmp_path / "meta.yaml"
    path.write_text(
        "triggers:\n  - id: s\n    actions:\n      - {id: a, url: 'http://169.254.169.254/', fields: {email: email}}\n"
    )
    rc, out = _done(_cli("--triggers", str(path), "test", "s.a"))
    assert rc == 1 and "FAILED" in out
    assert "refusing to connect to '169.254.169.254'" in out and "cloud metadata" in out, out


# --- redirects ----------------------------------------------------------------------------------


def test_a_redirect_is_a_rejection_and_is_never_followed(sqlite_store, receiver, tmp_path, loopback_only):
    trigger, action = _one_action(tmp_path, f"{receiver.url}/hook")
    receiver.script(Reply(status=302, body=b"", headers={"Location": f"{receiver.url}/elsewhere"}))

    report = run_test(sqlite_store, trigger, action)

    assert not report.ok and report.http_status == 302 and "not followed" in report.message
    assert [r.path for r in receiver.requests] == ["/hook"], "exactly one request, to the action URL"
    assert loopback_only, "the connection tripwire sees this test's connections"

    assert run_test(sqlite_store, trigger, action).ok
    receiver.reset()
    add_leads(sqlite_store, 3)
    receiver.set_mode("ok")
    receiver.script(*[Reply(status=307, body=b"", headers={"Location": "/elsewhere"})] * 3)
    sel = Selection(trigger, action, T0.date())
    report = dispatch_shard(sqlite_store, sel, Shard(sel.action_key))
    assert [r.path for r in receiver.requests] == ["/hook"] * 3
    rows = ledger_rows(sqlite_store, sel.action_key).values()
    assert all(r["state"] == DeliveryState.DEAD and r["last_status"] == 307 for r in rows)
    assert all("redirect" in r["last_error"] and "not followed" in r["last_error"] for r in rows)
