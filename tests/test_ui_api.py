"""The Leadpost page and JSON API inside Airflow's own app: auth, CSRF, test execution, replay, masking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from leadpost.config import load_triggers
from leadpost.exceptions import ConfigError
from leadpost.ledger import Selection, Shard
from tests.conftest import REPO
from tests.leads import T0, add_leads, tag
from tests.receiver import Reply

__all__: list[str] = []

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

CANARY = "canary-Zq8vX2-auth-secret"  # the auth connection's value
STATIC_TOKEN = "static-token-5f3a9c"  # a static parameter of the action
AUTH_CONN = {
    "conn_type": "leadpost",
    "login": "X-Api-Key",
    "password": CANARY,
    "extra": {"auth_mode": "header"},
}
ACTION = "vip.crm"
CSRF = {"X-Leadpost-CSRF": "1"}
PREFIX = "/leadpost"


@pytest.fixture(scope="module")
def api(airflow_db) -> Iterator[dict]:
    """Airflow's real app (plugins mounted) with two SimpleAuthManager users and their tokens."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer")
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "leadpost-ui-tests-" + "x" * 64)
        from airflow.api_fastapi.app import create_app
        from fastapi.testclient import TestClient

        client = TestClient(create_app())
        passwords = json.loads(
            (Path(os.environ["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated").read_text()
        )
        tokens = {}
        for user in ("admin", "viewer"):
            resp = client.post("/auth/token", json={"username": user, "password": passwords[user]})
            assert resp.status_code == 201, resp.text
            tokens[user] = resp.json()["access_token"]
        yield {"client": client, "tokens": tokens}


def _auth(api: dict, user: str = "admin", **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api['tokens'][user]}", **extra}


def _write_triggers(path: Path, url: str, *, schedule: str = "0 9 * * *", shape: str = "body: form") -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            triggers:
              - id: vip
                schedule: "{schedule}"
                timezone: America/Sao_Paulo
                filters: {{tags_any: [vip], score: {{gte: 0}}}}
                actions:
                  - id: crm
                    url: {url}/hook
                    params: {{token: {STATIC_TOKEN}}}
                    fields: {{email: email, name: nome}}
                    auth_conn_id: crm_auth
                    concurrency: 1
                    {shape}
            """
        )
    )
    return path


@pytest.fixture
def setup(sqlite_store, receiver, tmp_path, monkeypatch):
    """A trigger whose action posts to the receiver, 4 vip leads, and the header-mode auth connection."""
    monkeypatch.setenv("LEADPOST_TRIGGERS", str(_write_triggers(tmp_path / "triggers.yaml", receiver.url)))
    monkeypatch.setenv("AIRFLOW_CONN_CRM_AUTH", json.dumps(AUTH_CONN))
    add_leads(sqlite_store, 5)
    tag(sqlite_store, range(1, 5), "vip")
    return sqlite_store


def _dead_letter(engine, receiver) -> None:
    """Dispatch for real: the receiver refuses lead 1 (echoing its values and the secrets), accepts the rest."""
    from leadpost.config import default_triggers_path, load_triggers
    from leadpost.dispatch import dispatch_shard

    trigger, action = load_triggers(default_triggers_path()).resolve(ACTION)
    echo = f"bad lead1@example.com (Lead Ñandú 1), like lead2@example.com; key={CANARY} token={STATIC_TOKEN}"
    echo = echo.encode()
    receiver.script(Reply(status=422, body=echo))
    sel = Selection(trigger, action, T0.date())
    report = dispatch_shard(engine, sel, Shard(ACTION), require_active=False)
    assert not report.as_dict()["stopped"]
    receiver.reset()


def _action(payload: dict, key: str = ACTION) -> dict:
    return next(a for t in payload["triggers"] for a in t["actions"] if a["key"] == key)


GUARDED = [
    ("GET", "/"),
    ("GET", "/static/leadpost.css"),
    ("GET", "/static/leadpost.js"),
    ("GET", "/openapi.json"),
    ("GET", "/api/triggers"),
    ("GET", f"/api/actions/{ACTION}/attempts"),
    ("POST", f"/api/actions/{ACTION}/test"),
    ("POST", f"/api/actions/{ACTION}/replay"),
]


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_every_route_needs_an_airflow_login(api, setup, receiver, method, path):
    client = api["client"]
    resp = client.request(method, PREFIX + path, headers=CSRF)
    assert resp.status_code == 401, resp.text
    resp = client.request(method, PREFIX + path, headers={**CSRF, "Authorization": "Bearer not-a-jwt"})
    assert resp.status_code == 403, resp.text
    resp = client.request(method, PREFIX + path, headers=CSRF, cookies={"_token": "forged"})
    assert resp.status_code == 403, resp.text
    assert receiver.requests == []  # nothing was sent on anybody's behalf


def test_the_page_and_its_files_are_served_to_a_logged_in_user(api, setup):
    client = api["client"]
    page = client.get(f"{PREFIX}/", headers=_auth(api))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Test execution" in page.text and "Replay dead letters" in page.text
    css = client.get(f"{PREFIX}/static/leadpost.css", headers=_auth(api))
    assert css.status_code == 200 and "prefers-color-scheme: dark" in css.text
    js = client.get(f"{PREFIX}/static/leadpost.js", headers=_auth(api))
    assert js.status_code == 200 and "X-Leadpost-CSRF" in js.text
    for name in ("../api.py", "..%2Fapi.py", "missing.css", ".hidden.js"):
        assert client.get(f"{PREFIX}/static/{name}", headers=_auth(api)).status_code == 404


def test_the_payload_shows_schedule_next_run_filters_endpoint_and_counts(api, setup, receiver):
    resp = api["client"].get(f"{PREFIX}/api/triggers", headers=_auth(api))
    assert resp.status_code == 200
    data = resp.json()
    assert data["problems"] == [] and data["store_error"] is None
    (trigger,) = data["triggers"]
    assert trigger["id"] == "vip" and trigger["dag_id"] == "leadpost_vip"
    assert trigger["schedule"] == "0 9 * * *" and trigger["timezone"] == "America/Sao_Paulo"
    # 09:00 in São Paulo (UTC-3), within the next day
    next_run = datetime.fromisoformat(trigger["next_run"])
    assert trigger["next_run"].endswith("-03:00") and (next_run.hour, next_run.minute) == (9, 0)
    assert timedelta(0) < next_run - datetime.now(UTC) <= timedelta(days=1)
    assert trigger["filters"] == ["tags any of vip", "score ≥ 0"]
    action = _action(data)
    assert action["status"] == "untested" and action["reason"] == "never tested"
    assert action["endpoint"] == {
        "method": "POST",
        "url": f"{receiver.url}/hook",
        "body": "form",
        "params": {"token": "***"},
        "fields": {"email": "email", "name": "nome"},
        "auth_conn_id": "crm_auth",
    }
    assert action["counts"] == {"pending": 4, "in_flight": 0, "delivered": 0, "retrying": 0, "dead": 0}
    assert action["last_test"] is None


def test_test_execution_turns_an_untested_action_active(api, store, receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("LEADPOST_TRIGGERS", str(_write_triggers(tmp_path / "triggers.yaml", receiver.url)))
    monkeypatch.setenv("AIRFLOW_CONN_CRM_AUTH", json.dumps(AUTH_CONN))
    add_leads(store, 3)
    tag(store, range(1, 4), "vip")
    client = api["client"]

    resp = client.post(f"{PREFIX}/api/actions/{ACTION}/test", headers=_auth(api, **CSRF))
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["ok"] is True and report["status"] == "active" and report["http_status"] == 200
    assert report["request"].startswith(f"POST {receiver.url}/hook")
    assert "X-Api-Key: ***" in report["request"] and "token=***" in report["request"]
    assert report["response"] == "ok"
    assert report["state"]["status"] == "active" and report["state"]["last_test"]["ok"] is True
    # the real endpoint got the sample lead with the real credentials
    (sent,) = receiver.requests
    assert sent.header("X-Api-Key") == CANARY and sent.form()["token"] == STATIC_TOKEN
    assert sent.form()["email"] == "teste@leadpost.dev"

    action = _action(client.get(f"{PREFIX}/api/triggers", headers=_auth(api)).json())
    assert action["status"] == "active" and action["last_test"]["http_status"] == 200
    assert action["counts"]["pending"] == 3


def test_a_404_endpoint_keeps_the_action_untested_and_says_why(api, setup, receiver):
    receiver.set_mode("404")
    client = api["client"]
    resp = client.post(f"{PREFIX}/api/actions/{ACTION}/test", headers=_auth(api, **CSRF))
    assert resp.status_code == 200
    report = resp.json()
    assert report["ok"] is False and report["status"] == "untested" and report["http_status"] == 404
    assert report["hint"] == "check the URL: the endpoint answered 404 Not Found"
    action = _action(client.get(f"{PREFIX}/api/triggers", headers=_auth(api)).json())
    assert action["status"] == "untested"
    assert action["last_test"]["ok"] is False and action["last_test"]["http_status"] == 404
    assert action["last_test"]["message"].startswith("HTTP 404 Not Found")
    page = client.get(f"{PREFIX}/", headers=_auth(api)).text
    assert 'class="badge badge-untested"' in page and "HTTP 404 Not Found" in page


def test_a_missing_auth_connection_is_explained_and_nothing_is_sent(api, setup, receiver, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_CRM_AUTH")
    client = api["client"]
    action = _action(client.get(f"{PREFIX}/api/triggers", headers=_auth(api)).json())
    assert action["status"] == "untested" and "no such Airflow connection" in action["problem"]
    resp = client.post(f"{PREFIX}/api/actions/{ACTION}/test", headers=_auth(api, **CSRF))
    assert resp.status_code == 409 and "auth_conn_id 'crm_auth'" in resp.json()["detail"][0]
    assert receiver.requests == []


def test_replay_moves_dead_letters_back_to_pending(api, setup, receiver):
    _dead_letter(setup, receiver)
    client = api["client"]
    action = _action(client.get(f"{PREFIX}/api/triggers", headers=_auth(api)).json())
    assert action["counts"] == {"pending": 0, "in_flight": 0, "delivered": 3, "retrying": 0, "dead": 1}
    log = client.get(f"{PREFIX}/api/actions/{ACTION}/attempts", headers=_auth(api)).json()
    dead = [a for a in log["attempts"] if a["state"] == "dead"]
    assert [(a["lead_id"], a["status_code"], a["email"]) for a in dead] == [(1, 422, "l***@example.com")]
    assert dead[0]["error"].startswith("HTTP 422 Unprocessable")

    none = client.post(f"{PREFIX}/api/actions/{ACTION}/replay?status=500", headers=_auth(api, **CSRF))
    assert none.status_code == 200 and none.json()["replayed"] == 0

    resp = client.post(f"{PREFIX}/api/actions/{ACTION}/replay?status=422", headers=_auth(api, **CSRF))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["replayed"] == 1 and body["state"]["counts"]["dead"] == 0
    assert body["state"]["counts"]["pending"] == 1
    log = client.get(f"{PREFIX}/api/actions/{ACTION}/attempts?limit=1", headers=_auth(api)).json()
    assert [(a["lead_id"], a["state"]) for a in log["attempts"]] == [(1, "pending")]


def test_state_changes_are_post_only_and_refuse_cross_site_requests(api, setup, receiver):
    _dead_letter(setup, receiver)
    client = api["client"]
    for verb in ("test", "replay"):
        url = f"{PREFIX}/api/actions/{ACTION}/{verb}"
        assert client.get(url, headers=_auth(api, **CSRF)).status_code == 405
        missing = client.post(url, headers=_auth(api))
        assert missing.status_code == 403 and "X-Leadpost-CSRF" in missing.json()["detail"]
        wrong = client.post(url, headers=_auth(api, **{"X-Leadpost-CSRF": "yes"}))
        assert wrong.status_code == 403
        cross = client.post(url, headers=_auth(api, **CSRF, **{"Sec-Fetch-Site": "cross-site"}))
        assert cross.status_code == 403 and "cross-site" in cross.json()["detail"]
    assert receiver.requests == []
    action = _action(client.get(f"{PREFIX}/api/triggers", headers=_auth(api)).json())
    assert action["status"] == "untested" and action["counts"]["dead"] == 1


def test_a_viewer_may_look_but_not_test_or_replay(api, setup, receiver):
    client = api["client"]
    assert client.get(f"{PREFIX}/", headers=_auth(api, "viewer")).status_code == 200
    assert client.get(f"{PREFIX}/api/triggers", headers=_auth(api, "viewer")).status_code == 200
    for verb in ("test", "replay"):
        resp = client.post(f"{PREFIX}/api/actions/{ACTION}/{verb}", headers=_auth(api, "viewer", **CSRF))
        assert resp.status_code == 403 and "leadpost_vip" in resp.json()["detail"]
    assert receiver.requests == []


def test_unknown_actions_are_404(api, setup):
    client = api["client"]
    assert client.get(f"{PREFIX}/api/actions/vip.nope/attempts", headers=_auth(api)).status_code == 404
    resp = client.post(f"{PREFIX}/api/actions/nope.crm/test", headers=_auth(api, **CSRF))
    assert resp.status_code == 404 and "no trigger 'nope'" in resp.json()["detail"]
    assert client.post(f"{PREFIX}/api/actions/not-a-ref/test", headers=_auth(api, **CSRF)).status_code == 404


@pytest.mark.parametrize("shape", ["body: form", "body: json", "method: GET"])
def test_no_secret_and_no_lead_value_in_any_response(api, setup, receiver, tmp_path, shape):
    _write_triggers(Path(os.environ["LEADPOST_TRIGGERS"]), receiver.url, shape=shape)
    _dead_letter(setup, receiver)
    receiver.set_mode("ok", body=f"echo key={CANARY} token={STATIC_TOKEN}")
    client = api["client"]
    bodies = [
        client.post(f"{PREFIX}/api/actions/{ACTION}/test", headers=_auth(api, **CSRF)).text,
        client.get(f"{PREFIX}/", headers=_auth(api)).text,
        client.get(f"{PREFIX}/api/triggers", headers=_auth(api)).text,
        client.get(f"{PREFIX}/api/actions/{ACTION}/attempts", headers=_auth(api)).text,
        client.post(f"{PREFIX}/api/actions/{ACTION}/replay", headers=_auth(api, **CSRF)).text,
        client.get(f"{PREFIX}/api/actions/{ACTION}/attempts", headers=_auth(api)).text,
    ]
    sent = receiver.requests[0]
    assert sent.header("X-Api-Key") == CANARY  # the secret and the static token were really used
    assert STATIC_TOKEN in (sent.body.decode() + str(sent.query))
    assert "token=***" in bodies[0] or '"token":"***"' in bodies[0]
    assert "l***@example.com" in bodies[1] and "l***@example.com" in bodies[3]
    forbidden = [CANARY, STATIC_TOKEN, "Ñandú", "%C3%91and%C3%BA"]
    forbidden += [f"lead{i}@example.com" for i in range(1, 6)] + [
        f"lead{i}%40example.com" for i in range(1, 6)
    ]
    for body in bodies:
        for value in forbidden:
            assert value not in body


def test_triggers_file_errors_are_shown_in_an_error_box(api, setup, tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "triggers:\n  - id: x\n    actions:\n      - {id: a, url: 'https://x.com', fields: {emial: e}}\n"
        "  - id: y\n    schedule: 'every day'\n    actions:\n      - {id: b, url: 'https://y.com', fields: {email: e}}\n"
    )
    monkeypatch.setenv("LEADPOST_TRIGGERS", str(bad))
    client = api["client"]
    data = client.get(f"{PREFIX}/api/triggers", headers=_auth(api)).json()
    with pytest.raises(ConfigError) as raised:
        load_triggers(bad)
    assert data["triggers"] == [] and data["problems"] == raised.value.problems  # every one, as validate says
    assert f"{bad}:4: triggers[0].actions[0].fields.emial: unknown lead field 'emial'" in data["problems"][0]
    assert any("triggers[1].schedule: invalid cron expression 'every day'" in p for p in data["problems"])
    page = client.get(f"{PREFIX}/", headers=_auth(api))
    assert page.status_code == 200
    n = len(data["problems"])
    assert 'id="config-errors"' in page.text and f"The triggers file has {n} problems" in page.text
    assert "unknown lead field &#39;emial&#39;" in page.text and "invalid cron expression" in page.text
    resp = client.post(f"{PREFIX}/api/actions/x.a/test", headers=_auth(api, **CSRF))
    assert resp.status_code == 409 and resp.json()["detail"][0] == "the triggers file is invalid"


def test_the_page_renders_status_counts_and_the_delivery_log(api, setup, receiver):
    _dead_letter(setup, receiver)
    page = api["client"].get(f"{PREFIX}/", headers=_auth(api)).text
    assert 'data-key="vip.crm" data-status="untested"' in page
    assert 'data-count="dead">1<' in page and 'data-count="delivered">3<' in page
    assert "<code>token=***</code>" in page and "<code>email→email</code>" in page
    assert "l***@example.com" in page and "HTTP 422 Unprocessable" in page
    assert "Next run" in page and "-03" in page


def test_the_openapi_describes_the_json_api(api, setup):
    spec = api["client"].get(f"{PREFIX}/openapi.json", headers=_auth(api)).json()
    assert set(spec["paths"]) == {
        "/api/triggers",
        "/api/actions/{ref}/attempts",
        "/api/actions/{ref}/test",
        "/api/actions/{ref}/replay",
    }
    assert set(spec["paths"]["/api/actions/{ref}/replay"]) == {"post"}
    schemas = spec["components"]["schemas"]
    assert {"TriggersOut", "ActionOut", "AttemptsOut", "TestExecutionOut", "ReplayOut"} <= set(schemas)


def test_airflow_lists_the_plugin_exactly_once():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "plugins", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    plugins = json.loads(result.stdout[result.stdout.index("[") :])
    ours = [p for p in plugins if p["name"] == "leadpost"]
    assert len(ours) == 1, plugins
    assert "leadpost.ui.plugin:LeadpostPlugin" in ours[0]["source"]
    assert "'url_route': 'leadpost'" in str(ours[0]["external_views"])


def test_importing_the_plugin_loads_neither_the_api_nor_the_store():
    code = (
        "import sys, leadpost.ui.plugin as p; "
        "print(sorted(m for m in sys.modules if m.startswith(('leadpost.ui.api', 'leadpost.store', 'fastapi'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_an_unreachable_store_is_explained_and_the_triggers_still_listed(api, setup, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LEADPOST_DEFAULT", "postgresql://postgres:pw-Canary-91@127.0.0.1:1/nope")
    client = api["client"]
    data = client.get(f"{PREFIX}/api/triggers", headers=_auth(api)).json()
    assert data["store_error"].startswith("the lead store cannot be reached (OperationalError")
    assert [a["counts"] for t in data["triggers"] for a in t["actions"]] == [None]
    page = client.get(f"{PREFIX}/", headers=_auth(api)).text
    assert 'id="store-error"' in page and "Lead store unavailable" in page
    assert "pw-Canary-91" not in page and "pw-Canary-91" not in json.dumps(data)
    resp = client.post(f"{PREFIX}/api/actions/{ACTION}/test", headers=_auth(api, **CSRF))
    assert resp.status_code == 503 and "cannot be reached" in resp.json()["detail"]
    assert "pw-Canary-91" not in resp.text


def test_an_unreadable_triggers_path_is_a_problem_on_the_page(api, setup, tmp_path, monkeypatch):
    monkeypatch.setenv("LEADPOST_TRIGGERS", str(tmp_path))  # a directory
    data = api["client"].get(f"{PREFIX}/api/triggers", headers=_auth(api)).json()
    assert data["problems"] == [f"{tmp_path}: cannot be read (Is a directory)"]
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("LEADPOST_TRIGGERS", str(missing))
    page = api["client"].get(f"{PREFIX}/", headers=_auth(api)).text
    assert "The triggers file has 1 problem<" in page and "file not found (set LEADPOST_TRIGGERS" in page


@pytest.mark.parametrize(
    ("status", "reason", "icon"),
    [
        ("failing", "401 Unauthorized from the endpoint: re-test to resume", "!"),
        ("disabled", "410 Gone: the receiver asked us to stop", "\u2013"),
    ],
)
def test_failing_and_disabled_actions_carry_their_badge_and_reason(api, setup, status, reason, icon):
    from leadpost.ledger import set_action_status
    from leadpost.states import ActionStatus

    client = api["client"]
    assert client.post(f"{PREFIX}/api/actions/{ACTION}/test", headers=_auth(api, **CSRF)).json()["ok"]
    assert set_action_status(setup, ACTION, ActionStatus(status), reason=reason)  # as dispatch does
    assert _action(client.get(f"{PREFIX}/api/triggers", headers=_auth(api)).json())["status"] == status
    page = client.get(f"{PREFIX}/", headers=_auth(api)).text
    card = page[page.index('data-key="vip.crm"') :]
    assert f'class="badge badge-{status}"' in card and f'data-badge-icon aria-hidden="true">{icon}<' in card
    assert f"data-reason>{reason}</p>" in card
