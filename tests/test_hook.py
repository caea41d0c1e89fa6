"""LeadPostHook against the real receiver: what goes on the wire, how answers are classified,
and that secrets never leak."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests
from standardwebhooks import Webhook

from leadpost import __version__
from leadpost.config import ActionConfig
from leadpost.exceptions import ConfigError
from leadpost.hook import LeadPostHook, PreparedLeadRequest, TestResult
from leadpost.states import OutcomeKind, classify
from tests.receiver import Reply

SEED_QUERY = "/meupost?token=0132456789&email={email}"
CANARY = "canary-S3cr3t-7f3a9"
WHSEC = "whsec_" + base64.b64encode(b"an-hmac-signing-key-of-32-bytes!").decode()
UPDATED = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
LEAD = {
    "id": 42,
    "email": "joao@example.com",
    "name": "João Ñandú",
    "birth_date": date(1990, 5, 17),
    "phone": "+55 11 91234-5678",
    "company": "Açaí & Cia",
    "city": "São Paulo",
    "state": "SP",
    "updated_at": UPDATED,
}
ALL_FIELDS = {
    "email": "email",
    "name": "nome",
    "birth_date": "nascimento",
    "phone": "telefone",
    "company": "empresa",
    "city": "cidade",
    "state": "uf",
}


def _action(receiver, **kw) -> ActionConfig:
    kw.setdefault("id", "crm")
    if "url" not in kw:
        kw.setdefault("link", receiver.url + SEED_QUERY)
    return ActionConfig(**kw)


def _connection(monkeypatch, conn_id: str, *, mode: str, login: str | None = None, password: str = CANARY):
    conn = {"conn_type": "leadpost", "login": login, "password": password, "extra": {"auth_mode": mode}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def _send(hook: LeadPostHook, lead=LEAD) -> TestResult:
    return hook.send_one(lead)


# --- the seed example link ------------------------------------------------------------------------


def test_seed_link_by_get_puts_token_and_email_in_the_query(receiver):
    hook = LeadPostHook(_action(receiver, method="GET"), action_key="vip.crm")
    result = _send(hook)
    assert result.outcome.ok and result.outcome.status == 200
    (seen,) = receiver.requests
    assert seen.method == "GET" and seen.path == "/meupost"
    assert seen.query == [("token", "0132456789"), ("email", "joao@example.com")]
    assert seen.body == b""
    assert result.request.url == f"{receiver.url}/meupost?token=0132456789&email=joao%40example.com"


def test_seed_link_by_post_sends_a_utf8_form(receiver):
    hook = LeadPostHook(_action(receiver, method="POST"), action_key="vip.crm")
    assert _send(hook).outcome.ok
    (seen,) = receiver.requests
    assert seen.method == "POST" and seen.path == "/meupost" and seen.query == []
    assert seen.header("Content-Type") == "application/x-www-form-urlencoded; charset=utf-8"
    assert seen.form() == {"token": "0132456789", "email": "joao@example.com"}


def test_post_json_is_compact_utf8(receiver):
    action = _action(receiver, url=receiver.url + "/leads", method="POST", body="json", fields=ALL_FIELDS,
                     params={"origem": "airflow", "lista": 7})  # fmt: skip
    hook = LeadPostHook(action, action_key="vip.crm")
    assert _send(hook).outcome.ok
    (seen,) = receiver.requests
    assert seen.header("Content-Type") == "application/json"
    assert seen.json() == {
        "origem": "airflow",
        "lista": "7",
        "email": "joao@example.com",
        "nome": "João Ñandú",
        "nascimento": "1990-05-17",
        "telefone": "+55 11 91234-5678",
        "empresa": "Açaí & Cia",
        "cidade": "São Paulo",
        "uf": "SP",
    }
    assert "São Paulo".encode() in seen.body and b", " not in seen.body  # UTF-8, no \\u escapes, compact


def test_accents_travel_intact_in_query_and_form(receiver):
    fields = {"name": "nome", "city": "cidade"}
    get = LeadPostHook(
        _action(receiver, url=receiver.url + "/g", method="GET", fields=fields), action_key="t.g"
    )
    post = LeadPostHook(_action(receiver, url=receiver.url + "/p", fields=fields), action_key="t.p")
    request = get.build_request(LEAD)
    assert "cidade=S%C3%A3o+Paulo" in request.url
    assert "nome=Jo%C3%A3o+%C3%91and%C3%BA" in request.url
    assert _send(get).outcome.ok and _send(post).outcome.ok
    by_path = {r.path: r for r in receiver.requests}
    assert by_path["/g"].query_dict() == {"nome": "João Ñandú", "cidade": "São Paulo"}
    assert by_path["/p"].form() == {"nome": "João Ñandú", "cidade": "São Paulo"}


@pytest.mark.parametrize("empty", [None, "", "   ", "\t"])
def test_fields_without_a_value_are_omitted(receiver, empty):
    action = _action(receiver, url=receiver.url + "/f", fields=ALL_FIELDS)
    hook = LeadPostHook(action, action_key="t.f")
    lead = {"id": 7, "email": "ana@example.com", "name": empty, "phone": empty, "city": "Recife"}
    assert _send(hook, lead).outcome.ok
    assert receiver.requests[0].form() == {"email": "ana@example.com", "cidade": "Recife"}


@pytest.mark.parametrize(
    "birth", [date(1985, 2, 3), datetime(1985, 2, 3, 0, 0, tzinfo=UTC), "1985-02-03", " 1985-02-03 "]
)
def test_birth_date_is_sent_as_an_iso_date(receiver, birth):
    action = _action(receiver, url=receiver.url + "/b", method="GET", fields={"birth_date": "nasc"})
    hook = LeadPostHook(action, action_key="t.b")
    assert _send(hook, {"id": 1, "email": "x@y.z", "birth_date": birth}).outcome.ok
    assert receiver.requests[0].query == [("nasc", "1985-02-03")]


def test_standard_headers(receiver):
    hook = LeadPostHook(_action(receiver), action_key="vip.crm")
    result = _send(hook)
    seen = receiver.requests[0]
    assert seen.header("User-Agent") == f"leadpost/{__version__}"
    assert seen.header("Accept") == "*/*"
    assert seen.header("Idempotency-Key") == result.request.idempotency_key
    assert seen.header("Authorization") is None  # no auth connection, no auth


# --- Idempotency-Key ------------------------------------------------------------------------------


def test_idempotency_key_is_stable_per_action_lead_and_version(receiver):
    hook = LeadPostHook(_action(receiver), action_key="vip.crm")
    key = hook.build_request(LEAD).idempotency_key
    assert key.startswith("lp_") and len(key) == 35
    # Same action, lead and version: same key, also from a new hook and from the ISO text of the version.
    assert LeadPostHook(_action(receiver), action_key="vip.crm").build_request(LEAD).idempotency_key == key
    assert hook.build_request(LEAD, lead_version="2026-03-01T12:30:00Z").idempotency_key == key
    assert hook.build_request(dict(LEAD, updated_at=datetime(2026, 3, 1, 12, 30))).idempotency_key == key
    # Anything else changes it.
    later = datetime(2026, 3, 2, tzinfo=UTC)
    assert hook.build_request(dict(LEAD, updated_at=later)).idempotency_key != key
    assert hook.build_request(LEAD, lead_version=later).idempotency_key != key
    assert hook.build_request(dict(LEAD, id=43)).idempotency_key != key
    assert LeadPostHook(_action(receiver), action_key="vip.erp").build_request(LEAD).idempotency_key != key
    assert LeadPostHook(_action(receiver), action_key="other.crm").build_request(LEAD).idempotency_key != key


def test_resent_requests_carry_the_same_key_so_the_receiver_sees_the_duplicate(receiver):
    hook = LeadPostHook(_action(receiver), action_key="vip.crm")
    _send(hook)
    _send(hook)
    _send(hook, dict(LEAD, id=43))
    stats = receiver.stats()
    assert stats["count"] == 3
    assert stats["unique_idempotency_keys"] == 2
    assert stats["duplicates"] == 1


# --- authentication -------------------------------------------------------------------------------


def test_basic_auth(receiver, monkeypatch):
    _connection(monkeypatch, "crm_basic", mode="basic", login="usuario")
    hook = LeadPostHook(_action(receiver, auth_conn_id="crm_basic"), action_key="vip.crm")
    assert _send(hook).outcome.ok
    expected = base64.b64encode(f"usuario:{CANARY}".encode()).decode()
    assert receiver.requests[0].header("Authorization") == f"Basic {expected}"


def test_header_auth(receiver, monkeypatch):
    _connection(monkeypatch, "crm_header", mode="header", login="X-Api-Key")
    hook = LeadPostHook(_action(receiver, auth_conn_id="crm_header"), action_key="vip.crm")
    assert _send(hook).outcome.ok
    assert receiver.requests[0].header("x-api-key") == CANARY
    assert receiver.requests[0].header("Authorization") is None


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_query_auth(receiver, monkeypatch, method):
    _connection(monkeypatch, "crm_query", mode="query", login="api_key")
    hook = LeadPostHook(_action(receiver, auth_conn_id="crm_query", method=method), action_key="vip.crm")
    assert _send(hook).outcome.ok
    seen = receiver.requests[0]
    assert seen.query_dict()["api_key"] == CANARY
    if method == "POST":
        assert seen.form() == {"token": "0132456789", "email": "joao@example.com"}


def test_bearer_auth(receiver, monkeypatch):
    _connection(monkeypatch, "crm_bearer", mode="bearer")
    hook = LeadPostHook(_action(receiver, auth_conn_id="crm_bearer"), action_key="vip.crm")
    assert _send(hook).outcome.ok
    assert receiver.requests[0].header("Authorization") == f"Bearer {CANARY}"


@pytest.mark.parametrize(("method", "body"), [("POST", "form"), ("POST", "json"), ("GET", None)])
def test_hmac_signature_verifies_with_the_reference_library_and_the_spec_formula(
    receiver, monkeypatch, method, body
):
    _connection(monkeypatch, "hooks_hmac", mode="hmac", password=WHSEC)
    action = _action(receiver, url=receiver.url + "/wh", method=method, body=body, fields=ALL_FIELDS)
    hook = LeadPostHook(action.model_copy(update={"auth_conn_id": "hooks_hmac"}), action_key="vip.crm")
    result = _send(hook)
    assert result.outcome.ok
    seen = receiver.requests[0]
    headers = dict(seen.headers)
    # The receiver's view: the raw bytes it got verify with the reference implementation.
    Webhook(WHSEC).verify(seen.body, headers, json_parse=False)
    # And recomputed here from the spec: base64(HMAC-SHA256(key, "{id}.{timestamp}." + body)).
    msg_id, timestamp = seen.header("webhook-id"), seen.header("webhook-timestamp")
    key = base64.b64decode(WHSEC.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + seen.body, hashlib.sha256).digest()
    assert seen.header("webhook-signature") == "v1," + base64.b64encode(mac).decode()
    assert msg_id == seen.header("Idempotency-Key") == result.request.idempotency_key
    assert abs(int(timestamp) - time.time()) < 60
    if method == "GET":
        assert seen.body == b"" and seen.query_dict()["cidade"] == "São Paulo"


def test_a_non_base64_hmac_secret_is_refused_before_anything_is_sent(receiver, monkeypatch):
    _connection(monkeypatch, "bad_hmac", mode="hmac", password="whsec_my-secret!")
    hook = LeadPostHook(_action(receiver, auth_conn_id="bad_hmac"), action_key="vip.crm")
    with pytest.raises(
        ConfigError, match="connection 'bad_hmac': password: the part after 'whsec_' is not valid"
    ):
        hook.build_request(LEAD)
    assert receiver.requests == []


def test_the_connection_is_looked_up_once_per_hook(receiver, monkeypatch):
    _connection(monkeypatch, "crm_once", mode="bearer")
    hook = LeadPostHook(_action(receiver, auth_conn_id="crm_once"), action_key="vip.crm")
    hook.build_request(LEAD)
    monkeypatch.delenv("AIRFLOW_CONN_CRM_ONCE")  # a second lookup would now fail
    for lead_id in range(3):
        assert _send(hook, dict(LEAD, id=lead_id)).outcome.ok
    assert {r.header("Authorization") for r in receiver.requests} == {f"Bearer {CANARY}"}
    with pytest.raises(ConfigError, match="auth_conn_id 'crm_once': no such Airflow connection"):
        LeadPostHook(_action(receiver, auth_conn_id="crm_once"), action_key="vip.crm").build_request(LEAD)


def test_auth_conn_id_argument_overrides_the_action(receiver, monkeypatch):
    _connection(monkeypatch, "crm_override", mode="bearer")
    hook = LeadPostHook(_action(receiver), action_key="vip.crm", auth_conn_id="crm_override")
    assert _send(hook).outcome.ok
    assert receiver.requests[0].header("Authorization") == f"Bearer {CANARY}"
    assert hook.auth_digest() != "" and CANARY not in hook.auth_digest()
    assert LeadPostHook(_action(receiver), action_key="vip.crm").auth_digest() == ""


def test_query_auth_parameter_may_not_clash_with_action_parameters(receiver, monkeypatch):
    _connection(monkeypatch, "crm_clash", mode="query", login="token")
    hook = LeadPostHook(_action(receiver, auth_conn_id="crm_clash"), action_key="vip.crm")
    with pytest.raises(
        ConfigError, match=re.escape("query auth parameter 'token' is also a parameter of action 'vip.crm'")
    ):
        hook.build_request(LEAD)


def test_a_pinned_host_refuses_an_action_pointing_elsewhere(receiver, monkeypatch):
    conn = {
        "conn_type": "leadpost",
        "password": CANARY,
        "host": "crm.example.com",
        "extra": {"auth_mode": "bearer"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CRM_PINNED", json.dumps(conn))
    hook = LeadPostHook(_action(receiver, auth_conn_id="crm_pinned"), action_key="vip.crm")
    with pytest.raises(ConfigError, match=re.escape("host is pinned to 'crm.example.com'")):
        hook.send_one(LEAD)
    assert receiver.requests == []


# --- classification -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "kind", "error"),
    [
        (Reply(status=201, body=b"created"), OutcomeKind.DELIVERED, None),
        (Reply(status=404, body=b"no such list"), OutcomeKind.REJECTED, "HTTP 404 Not Found: no such list"),
        (
            Reply(status=422, body=b"bad\r\nemail\x00"),
            OutcomeKind.REJECTED,
            "HTTP 422 Unprocessable Entity: bad email",
        ),
        (Reply(status=410, body=b""), OutcomeKind.GONE, "HTTP 410 Gone"),
        (
            Reply(status=401, body=b"who are you"),
            OutcomeKind.AUTH_FAILED,
            "HTTP 401 Unauthorized: who are you",
        ),
        (Reply(status=403, body=b""), OutcomeKind.AUTH_FAILED, "HTTP 403 Forbidden"),
        (Reply(status=500, body=b"boom"), OutcomeKind.TRANSIENT, "HTTP 500 Internal Server Error: boom"),
        (Reply(status=408, body=b""), OutcomeKind.TRANSIENT, "HTTP 408 Request Timeout"),
    ],
)
def test_statuses_are_classified(receiver, reply, kind, error):
    receiver.script(reply)
    outcome = _send(LeadPostHook(_action(receiver), action_key="vip.crm")).outcome
    assert outcome.kind is kind
    assert outcome.status == reply.status
    assert outcome.error == error


def test_429_and_503_carry_retry_after_in_seconds_or_as_a_date(receiver):
    hook = LeadPostHook(_action(receiver), action_key="vip.crm")
    in_90s = format_datetime(datetime.fromtimestamp(time.time() + 90, tz=UTC), usegmt=True)
    receiver.script(
        Reply(status=429, body=b"slow down", headers={"Retry-After": "7"}),
        Reply(status=503, headers={"Retry-After": in_90s}),
        Reply(status=503, headers={"Retry-After": "86400"}),
    )
    first, second, third = (_send(hook).outcome for _ in range(3))
    assert (first.kind, first.status, first.retry_after_s) == (OutcomeKind.TRANSIENT, 429, 7.0)
    assert first.error == "HTTP 429 Too Many Requests: slow down"
    assert second.kind is OutcomeKind.TRANSIENT and 80 <= second.retry_after_s <= 91
    assert third.retry_after_s == 3600  # capped at one hour


def test_a_long_error_body_is_cut_to_a_short_snippet(receiver):
    receiver.script(Reply(status=400, body=b"x" * 5000))
    result = _send(LeadPostHook(_action(receiver), action_key="vip.crm"))
    assert result.outcome.error.startswith("HTTP 400 Bad Request: xxx")
    assert len(result.outcome.error) <= 200
    assert len(result.response_snippet) <= 500


def test_a_redirect_is_not_followed(receiver):
    receiver.script(Reply(status=302, body=b"", headers={"Location": "http://127.0.0.1:9/elsewhere"}))
    outcome = _send(LeadPostHook(_action(receiver), action_key="vip.crm")).outcome
    assert outcome.kind is OutcomeKind.REJECTED and outcome.status == 302
    assert "redirect to http://127.0.0.1:9/elsewhere not followed" in outcome.error
    assert len(receiver.requests) == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_is_transient_and_readable():
    port = _closed_port()
    action = ActionConfig(id="crm", url=f"http://127.0.0.1:{port}/x", fields={"email": "email"})
    result = LeadPostHook(action, action_key="vip.crm").send_one(LEAD)
    assert result.outcome.kind is OutcomeKind.TRANSIENT
    assert result.outcome.status is None
    assert result.outcome.error == f"connection refused: 127.0.0.1:{port}"
    assert result.response_snippet is None


def test_a_hanging_receiver_times_out_as_transient(receiver):
    receiver.script(Reply(hang=True))
    hook = LeadPostHook(_action(receiver, timeout_s=0.3), action_key="vip.crm")
    started = time.monotonic()
    result = hook.send_one(LEAD)
    assert time.monotonic() - started < 3
    assert result.outcome.kind is OutcomeKind.TRANSIENT
    assert result.outcome.error == "timeout after 0.3s"


def test_a_reset_connection_is_transient(receiver):
    receiver.script(Reply(reset=True))
    outcome = _send(LeadPostHook(_action(receiver), action_key="vip.crm")).outcome
    assert outcome.kind is OutcomeKind.TRANSIENT and outcome.status is None
    assert "127.0.0.1" in outcome.error and (
        "reset" in outcome.error or "closed the connection" in outcome.error
    )


# --- the pooled client ----------------------------------------------------------------------------


def test_one_pooled_client_sends_many_leads_concurrently(receiver):
    receiver.set_mode("ok", delay_s=0.02)
    hook = LeadPostHook(_action(receiver), action_key="vip.crm")
    leads = [dict(LEAD, id=i, email=f"lead{i}@example.com") for i in range(200)]

    async def run():
        queue: asyncio.Queue = asyncio.Queue()
        for lead in leads:
            queue.put_nowait(lead)
        outcomes = []

        async def worker(client):
            while not queue.empty():
                outcomes.append(await client.send(hook.build_request(queue.get_nowait())))

        async with hook.async_client(16) as client:
            await asyncio.gather(*(worker(client) for _ in range(16)))
        return outcomes

    started = time.monotonic()
    outcomes = asyncio.run(run())
    elapsed = time.monotonic() - started
    assert len(outcomes) == 200 and all(o.ok for o in outcomes)
    stats = receiver.stats()
    assert stats["unique_idempotency_keys"] == 200 and stats["duplicates"] == 0
    assert {r.form()["email"] for r in receiver.requests} == {lead["email"] for lead in leads}
    # 200 requests of 20 ms each, 16 at a time: far below the 4 s they would take one by one.
    assert elapsed < 2.5


def test_send_one_works_inside_a_running_event_loop(receiver):
    hook = LeadPostHook(_action(receiver), action_key="vip.crm")

    async def inside():
        return hook.send_one(LEAD)

    result = asyncio.run(inside())
    assert result.outcome.ok and result.response_snippet == "ok" and result.elapsed_ms > 0


def test_get_conn_still_gives_a_working_session(receiver, monkeypatch):
    _connection(monkeypatch, "crm_session", mode="header", login="X-Api-Key")
    hook = LeadPostHook(_action(receiver, auth_conn_id="crm_session"), action_key="vip.crm")
    session = hook.get_conn()
    assert isinstance(session, requests.Session)
    assert session.post(f"{receiver.url}/plain", data={"a": "1"}, timeout=5).status_code == 200
    assert receiver.requests[0].header("X-Api-Key") == CANARY


def test_airflow_builds_the_hook_from_the_connection_to_test_it(monkeypatch):
    from airflow.sdk import BaseHook

    _connection(monkeypatch, "crm_ui", mode="hmac", password=WHSEC)
    conn = BaseHook.get_connection("crm_ui")
    hook = conn.get_hook()
    assert isinstance(hook, LeadPostHook) and hook.auth_conn_id == "crm_ui"
    assert hook.test_connection() == (True, "connection 'crm_ui' is valid (auth mode hmac)")
    _connection(monkeypatch, "crm_ui", mode="hmac", password="not-a-secret")
    ok, message = LeadPostHook(auth_conn_id="crm_ui").test_connection()
    assert not ok and "'whsec_' followed by base64" in message


# --- secrets never leak ---------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "login"), [("basic", "u"), ("header", "X-Api-Key"), ("query", "api_key"),
                                             ("bearer", None)])  # fmt: skip
def test_a_canary_secret_never_leaks(receiver, monkeypatch, caplog, capsys, mode, login):
    _connection(monkeypatch, "crm_canary", mode=mode, login=login)
    caplog.set_level(logging.DEBUG)
    # A hostile receiver echoes the secret back in its body and in a Location header.
    receiver.script(
        Reply(status=400, body=f"bad token {CANARY} for {login}".encode()),
        Reply(status=302, body=b"", headers={"Location": f"https://evil.example/?t={CANARY}"}),
        Reply(status=200, body=f"welcome {CANARY}".encode()),
    )
    hook = LeadPostHook(_action(receiver, method="GET", auth_conn_id="crm_canary"), action_key="vip.crm")
    results = [hook.send_one(LEAD) for _ in range(3)]
    texts = [repr(hook), repr(hook.auth_settings)]
    for result in results:
        texts += [repr(result), repr(result.request), hook.describe(result.request)]
        texts += [result.outcome.error or "", result.response_snippet or ""]
    print(*texts, sep="\n")
    captured = capsys.readouterr()
    haystack = "\n".join([*texts, caplog.text, captured.out, captured.err])
    assert CANARY not in haystack
    assert "***" in results[0].outcome.error and "***" in results[2].response_snippet
    assert results[0].outcome.kind is OutcomeKind.REJECTED and results[1].outcome.kind is OutcomeKind.REJECTED
    # The receiver did get it: masking is for people, not for the wire.
    basic = base64.b64encode(f"u:{CANARY}".encode()).decode()
    wire = " ".join(str(dict(r.headers)) + str(r.query) for r in receiver.requests)
    assert (basic if mode == "basic" else CANARY) in wire


def test_describe_shows_the_request_with_secrets_masked(receiver, monkeypatch):
    _connection(monkeypatch, "crm_desc", mode="query", login="api_key")
    action = _action(
        receiver, url=receiver.url + "/meupost", params={"token": "0132456789"}, fields=ALL_FIELDS
    )
    hook = LeadPostHook(action, action_key="vip.crm", auth_conn_id="crm_desc")
    text = hook.describe(hook.build_request(LEAD))
    assert text.startswith(f"POST {receiver.url}/meupost?api_key=***\n")
    assert "  Content-Type: application/x-www-form-urlencoded; charset=utf-8" in text
    assert "  cidade = São Paulo" in text and "  token = 0132456789" in text
    assert "Idempotency-Key: lp_" in text
    assert CANARY not in text

    _connection(monkeypatch, "crm_desc_hmac", mode="hmac", password=WHSEC)
    hmac_hook = LeadPostHook(_action(receiver, auth_conn_id="crm_desc_hmac"), action_key="vip.crm")
    req = hmac_hook.build_request(LEAD)
    described = hmac_hook.describe(req)
    assert "  webhook-signature: ***" in described
    assert req.headers["webhook-signature"] not in described
    assert WHSEC not in described


# --- the receiver process the demo and the distributed test use -----------------------------------


def test_hook_against_a_receiver_subprocess_and_its_stats_endpoint(tmp_path):
    port_file = tmp_path / "port"
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.receiver",
            "--port",
            "0",
            "--delay-ms",
            "0",
            "--port-file",
            str(port_file),
        ],
        cwd=repo,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "receiver subprocess did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        action = ActionConfig(id="crm", link=url + SEED_QUERY)
        hook = LeadPostHook(action, action_key="vip.crm")
        requests.post(
            f"{url}/__receiver/script", json=[{"status": 503, "headers": {"Retry-After": "2"}}], timeout=5
        )
        first, second, third = (hook.send_one(LEAD).outcome for _ in range(3))
        assert (first.status, first.retry_after_s, second.status, third.status) == (503, 2.0, 200, 200)
        stats = requests.get(f"{url}/__receiver/stats", timeout=5).json()
        assert stats["count"] == 3 and stats["unique_idempotency_keys"] == 1 and stats["duplicates"] == 2
        assert stats["by_status"] == {"503": 1, "200": 2}
        assert stats["last"][0]["body"] == "token=0132456789&email=joao%40example.com"
        requests.post(f"{url}/__receiver/mode", json={"mode": "410"}, timeout=5)
        assert hook.send_one(LEAD).outcome.kind is OutcomeKind.GONE
        requests.post(f"{url}/__receiver/reset", timeout=5)
        assert requests.get(f"{url}/__receiver/stats", timeout=5).json()["count"] == 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


# --- cost ----------------------------------------------------------------------------------------


def test_building_requests_is_cheap(receiver, monkeypatch):
    """Building 10k requests takes well under a second (printed, not asserted: machines differ)."""
    _connection(monkeypatch, "crm_bench", mode="hmac", password=WHSEC)
    for body, conn in (("form", None), ("json", None), ("form", "crm_bench")):
        action = _action(receiver, url=receiver.url + "/b", fields=ALL_FIELDS, body=body, auth_conn_id=conn)
        hook = LeadPostHook(action, action_key="vip.crm")
        leads = [dict(LEAD, id=i) for i in range(10_000)]
        hook.build_request(leads[0])
        started = time.perf_counter()
        built = [hook.build_request(lead) for lead in leads]
        elapsed = time.perf_counter() - started
        print(f"build_request {body}{' + hmac' if conn else ''}: 10k in {elapsed * 1000:.0f} ms "
              f"({elapsed / 10_000 * 1e6:.1f} µs/lead)")  # fmt: skip
        assert len({req.idempotency_key for req in built}) == 10_000
        assert isinstance(built[0], PreparedLeadRequest)


def test_query_and_form_encoding_match_urllib_for_awkward_values(receiver):
    from urllib.parse import urlencode

    awkward = {"name": "a+b&c=d 100% ~ok/?#[]@!$'()*,;", "company": "🎉 Ünïcødé\u00a0x", "city": "x\ty"}
    fields = {"name": "nome", "company": "empresa", "city": "cidade"}
    get = LeadPostHook(
        _action(receiver, url=receiver.url + "/q", method="GET", fields=fields), action_key="t.q"
    )
    post = LeadPostHook(_action(receiver, url=receiver.url + "/f", fields=fields), action_key="t.f")
    lead = {"id": 1, **awkward}
    expected = urlencode([(fields[k], v) for k, v in awkward.items()])
    assert get.build_request(lead).url == f"{receiver.url}/q?{expected}"
    assert post.build_request(lead).body == expected.encode()
    assert _send(get, lead).outcome.ok and _send(post, lead).outcome.ok
    by_path = {r.path: r for r in receiver.requests}
    decoded = {fields[k]: v for k, v in awkward.items()}
    assert by_path["/q"].query_dict() == decoded and by_path["/f"].form() == decoded


def test_every_outcome_matches_what_the_receiver_answered_in_a_seeded_storm(receiver):
    weights = {"200": 4, "500": 1, "503": 1, "429": 1, "404": 1, "401": 1, "410": 1, "reset": 1}
    receiver.set_mode("random", seed=7, weights=weights, retry_after=3)
    hook = LeadPostHook(_action(receiver, timeout_s=5), action_key="vip.crm")
    outcomes = [hook.send_one(dict(LEAD, id=i)).outcome for i in range(60)]
    answered = [r.status for r in receiver.requests]
    assert len(answered) == 60 and len(set(answered)) >= 6  # the storm really mixed its answers
    for outcome, status in zip(outcomes, answered, strict=True):
        if status is None:  # connection reset
            assert (outcome.kind, outcome.status) == (OutcomeKind.TRANSIENT, None)
        else:
            assert (outcome.kind, outcome.status) == (classify(status), status)
            assert outcome.retry_after_s == (3.0 if status in (429, 503) else None)
    # Same seed, same storm: the fault sequence is reproducible.
    receiver.reset()
    receiver.set_mode("random", seed=7, weights=weights, retry_after=3)
    for i in range(60):
        hook.send_one(dict(LEAD, id=i))
    assert [r.status for r in receiver.requests] == answered


def test_a_request_retried_after_a_long_wait_is_signed_again(receiver, monkeypatch):
    import dataclasses

    _connection(monkeypatch, "hooks_resign", mode="hmac", password=WHSEC)
    hook = LeadPostHook(_action(receiver, auth_conn_id="hooks_resign"), action_key="vip.crm")
    req = hook.build_request(LEAD)
    # The same request, as if built ten minutes ago (a retry after a long Retry-After).
    stale = dict(req.headers, **{"webhook-timestamp": str(int(time.time()) - 600)})
    old = dataclasses.replace(req, headers=stale)

    async def send():
        async with hook.async_client(1) as client:
            return await client.send(old)

    assert asyncio.run(send()).ok
    seen = receiver.requests[0]
    Webhook(WHSEC).verify(seen.body, dict(seen.headers), json_parse=False)  # fresh timestamp, valid signature
    assert seen.header("webhook-id") == req.idempotency_key
