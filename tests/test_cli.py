"""The `leadpost` command as a user runs it: a real subprocess, real store, real receiver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.leads import add_leads
from tests.receiver import Reply

CANARY = "canary-secret-7f3a9"
LEADPOST = str(Path(sys.executable).parent / "leadpost")


@pytest.fixture
def cli_env(tmp_path, sqlite_store, receiver):
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text(
        textwrap.dedent(
            f"""
            triggers:
              - id: shop
                actions:
                  - id: crm
                    url: {receiver.url}/leads
                    fields: {{email: email, name: nome}}
                    auth_conn_id: crm_auth
            """
        )
    )
    env = dict(os.environ)
    env["LEADPOST_TRIGGERS"] = str(triggers)
    env["AIRFLOW_CONN_CRM_AUTH"] = json.dumps(
        {"conn_type": "leadpost", "login": "X-Token", "password": CANARY, "extra": {"auth_mode": "header"}}
    )
    return env


def leadpost(env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LEADPOST, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_validate_prints_every_problem_and_exits_non_zero(tmp_path, cli_env):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "triggers:\n  - id: x\n    actions:\n      - {id: a, url: 'ftp://x.com', fields: {emial: e}}\n"
    )
    result = leadpost(cli_env, "validate", str(bad))
    assert result.returncode == 1
    assert f"{bad}:4: triggers[0].actions[0].url: scheme 'ftp' is not allowed" in result.stderr
    assert "triggers[0].actions[0].fields.emial: unknown lead field 'emial'" in result.stderr
    ok = leadpost(cli_env, "validate")
    assert ok.returncode == 0 and "1 trigger(s), 1 action(s)" in ok.stdout


def test_test_execution_activates_and_masks_the_secret(cli_env, receiver):
    result = leadpost(cli_env, "test", "shop.crm")
    assert result.returncode == 0, result.stderr
    assert "PASSED" in result.stdout and "X-Token: ***" in result.stdout
    assert CANARY not in result.stdout + result.stderr
    assert receiver.requests[0].header("X-Token") == CANARY  # the receiver does get it
    status = json.loads(leadpost(cli_env, "status", "--json").stdout)
    assert status[0]["action"] == "shop.crm" and status[0]["status"] == "active"


@pytest.mark.parametrize(
    ("mode", "hint"),
    [("404", "check the URL"), ("401", "check the auth connection 'crm_auth'")],
)
def test_a_failed_test_execution_says_why(cli_env, receiver, mode, hint):
    receiver.set_mode(mode)
    result = leadpost(cli_env, "test", "shop.crm")
    assert result.returncode == 1
    assert "FAILED" in result.stdout and hint in result.stdout and "Status: untested" in result.stdout


def test_a_refused_connection_says_the_host_is_unreachable(tmp_path, cli_env):
    import socket

    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    triggers = Path(cli_env["LEADPOST_TRIGGERS"])
    triggers.write_text(
        triggers.read_text().replace(
            triggers.read_text().split("url: ")[1].split("/leads")[0], f"http://127.0.0.1:{port}"
        )
    )
    result = leadpost(cli_env, "test", "shop.crm")
    assert result.returncode == 1 and "host unreachable" in result.stdout


def test_status_deadletters_and_replay(cli_env, sqlite_store, receiver):
    add_leads(sqlite_store, 3)
    assert leadpost(cli_env, "test", "shop.crm").returncode == 0
    receiver.script(Reply(status=422))
    dispatched = leadpost(cli_env, "dispatch", "shop.crm")
    assert dispatched.returncode == 0, dispatched.stderr
    (row,) = json.loads(leadpost(cli_env, "status", "--json").stdout)
    assert (row["delivered"], row["dead"], row["pending"]) == (2, 1, 0)
    letters = json.loads(leadpost(cli_env, "deadletters", "shop.crm", "--json").stdout)
    assert [x["last_status"] for x in letters] == [422]
    replay = leadpost(cli_env, "replay", "shop.crm", "--status", "422")
    assert "1 dead letter(s) of shop.crm back to pending" in replay.stdout
    (row,) = json.loads(leadpost(cli_env, "status", "--json").stdout)
    assert (row["dead"], row["pending"]) == (0, 1)


def test_import_reports_rejected_lines_and_exits_non_zero(tmp_path, cli_env):
    csv = tmp_path / "leads.csv"
    csv.write_text(
        "email,name,birth_date\nana@x.com,Ana,1990-02-03\nnot-an-email,Bob,\ncid@x.com,Cid,31/02/1990\n"
    )
    result = leadpost(cli_env, "leads", "import", str(csv))
    assert result.returncode == 1
    assert "line 3:" in result.stderr and "line 4:" in result.stderr
    assert "1 imported, 0 updated, 2 rejected" in result.stdout


def test_unknown_action_is_a_clear_error(cli_env):
    result = leadpost(cli_env, "test", "shop.nope")
    assert result.returncode == 2 and "trigger 'shop' has no action 'nope'" in result.stderr


def _airflow_json(*args: str):
    airflow = str(Path(sys.executable).parent / "airflow")
    result = subprocess.run(
        [airflow, *args, "-o", "json"], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(result.stdout)


def test_the_provider_is_registered_with_airflow(airflow_db):
    providers = {p["package_name"] for p in _airflow_json("providers", "list")}
    assert "leadpost" in providers
    hooks = _airflow_json("providers", "hooks")
    assert any(h.get("connection_type") == "leadpost" for h in hooks), hooks[:3]


def test_public_names_are_sorted_complete_and_lazy():
    import leadpost

    names = [n for n in leadpost.__all__ if n != "__version__"]
    assert names == sorted(names)
    for name in names:
        assert getattr(leadpost, name) is not None
    code = "import sys, leadpost; print(any(m.startswith('airflow') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False", "importing leadpost must not import Airflow"
