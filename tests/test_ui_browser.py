"""One real browser run: Debian's Chromium against a real ``airflow api-server`` serving the Leadpost page.

Screenshots go to ``./screenshots/`` (git-ignored); with ``LEADPOST_UPDATE_SCREENSHOT=1`` the one of
the page inside the Airflow UI is also written to ``docs/screenshot.png`` for the README.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.leads import T0, add_leads, tag
from tests.receiver import Reply

__all__: list[str] = []

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
]
CANARY = "canary-Browser-7Hq2-secret"
SHOTS = REPO / "screenshots"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
READY_TIMEOUT_S = 60


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium; a missing browser fails the test with the reason (skips only when allowed)."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    reason = (
        f"{CHROMIUM} is missing: run `.venv/bin/python scripts/ensure_test_deps.py` "
        "(installs Debian's chromium with apt)"
    )
    if os.environ.get("LEADPOST_ALLOW_NO_BROWSER") == "1":
        pytest.skip(f"LEADPOST_ALLOW_NO_BROWSER=1 and {reason}")
    print(reason, file=sys.stderr)
    pytest.fail(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_bound(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _prepare_store(path: Path, triggers: Path, receiver) -> str:
    """Four vip leads and one dead letter (the receiver refused lead 1 during a real dispatch)."""
    from leadpost.config import load_triggers
    from leadpost.dispatch import dispatch_shard
    from leadpost.ledger import Selection, Shard
    from leadpost.store import get_engine, init_db

    url = f"sqlite:///{path}"
    engine = init_db(get_engine(url))
    add_leads(engine, 5)
    tag(engine, range(1, 5), "vip")
    trigger, action = load_triggers(triggers).resolve("vip.crm")
    receiver.script(Reply(status=422, body=b"bad lead lead1@example.com"))
    dispatch_shard(engine, Selection(trigger, action, T0.date()), Shard("vip.crm"), require_active=False)
    receiver.reset()
    engine.dispose()
    return url


@pytest.fixture
def api_server(tmp_path, receiver, monkeypatch) -> Iterator[dict]:
    """A migrated AIRFLOW_HOME of its own and a real api-server on a free loopback port."""
    home = tmp_path / "airflow_home"
    (home / "dags").mkdir(parents=True)
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text(
        textwrap.dedent(
            f"""
            triggers:
              - id: vip
                schedule: "*/15 * * * *"
                timezone: America/Sao_Paulo
                filters: {{tags_any: [vip]}}
                actions:
                  - id: crm
                    url: {receiver.url}/meupost
                    params: {{token: "0132456789"}}
                    fields: {{email: email, name: nome}}
                    auth_conn_id: crm_auth
                    concurrency: 1
            """
        )
    )
    auth_conn = {
        "conn_type": "leadpost",
        "login": "X-Api-Key",
        "password": CANARY,
        "extra": {"auth_mode": "header"},
    }
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API_AUTH__JWT_SECRET": "leadpost-browser-test-" + "x" * 64,
        "AIRFLOW__LEADPOST__ALLOWED_NETWORKS": "127.0.0.1/32",
        "LEADPOST_TRIGGERS": str(triggers),
        "AIRFLOW_CONN_CRM_AUTH": json.dumps(auth_conn),
    }
    monkeypatch.setenv("AIRFLOW_CONN_CRM_AUTH", env["AIRFLOW_CONN_CRM_AUTH"])  # the dispatch below runs here
    store_url = _prepare_store(tmp_path / "leads.db", triggers, receiver)
    env["AIRFLOW_CONN_LEADPOST_DEFAULT"] = json.dumps(
        {"conn_type": "sqlite", "host": store_url.removeprefix("sqlite:///")}
    )
    migrate = subprocess.run(
        [AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert migrate.returncode == 0, f"airflow db migrate failed:\n{migrate.stderr[-3000:]}"

    port = _free_port()
    log_path = tmp_path / "api-server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we stop exactly what we started
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, base, log_path)
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        request = urllib.request.Request(
            f"{base}/auth/token",
            data=json.dumps({"username": "admin", "password": password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            token = json.loads(resp.read())["access_token"]
        yield {"base": base, "token": token, "port": port, "log": log_path}
    finally:
        _stop(proc)
        assert not _port_bound(port), f"port {port} still bound after stopping the api-server"


def _wait_ready(proc: subprocess.Popen, base: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"api-server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    pytest.fail(f"api-server not ready within {READY_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the api-server we started (and its workers, in its own group); SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # a worker of that group still alive?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)


def _shot(page, name: str) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path), full_page=False)
    return path


def test_the_leadpost_page_tests_an_action_and_replays_dead_letters_in_a_real_browser(
    chromium, api_server, receiver
):
    from playwright.sync_api import expect, sync_playwright

    base, token = api_server["base"], api_server["token"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
            context.add_cookies([{"name": "_token", "value": token, "url": base}])
            page = context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))

            page.goto(f"{base}/leadpost/")
            card = page.locator('[data-key="vip.crm"]')
            badge = card.locator("[data-badge]")
            expect(badge).to_have_class("badge badge-untested")
            expect(badge.locator("[data-badge-icon]")).to_have_text("!")
            expect(card.locator('[data-count="dead"]')).to_have_text("1")
            expect(card.locator('[data-count="delivered"]')).to_have_text("3")
            expect(page.locator("[data-next-run]")).to_contain_text("-03")
            expect(card.locator(".endpoint")).to_contain_text("token=***")
            _shot(page, "leadpost-untested.png")

            card.get_by_role("button", name="Test execution").click()
            expect(badge).to_have_class("badge badge-active", timeout=15_000)
            expect(badge).to_contain_text("active")
            result = card.locator("[data-result]")
            expect(result.locator("[data-result-verdict]")).to_contain_text("Test execution passed")
            expect(result.locator("[data-result-request]")).to_contain_text("X-Api-Key: ***")
            expect(result.locator("[data-result-response]")).to_have_text("ok")
            expect(card.locator("[data-last-test-verdict]")).to_have_text("ok")
            _shot(page, "leadpost-test-result.png")
            (sent,) = receiver.requests
            assert sent.path == "/meupost" and sent.header("X-Api-Key") == CANARY

            card.get_by_role("button", name="Replay dead letters").click()
            expect(card.locator('[data-count="dead"]')).to_have_text("0")
            expect(card.locator('[data-count="pending"]')).to_have_text("1")
            expect(card.get_by_role("button", name="Replay dead letters")).to_be_disabled()
            expect(card.locator("[data-notice]")).to_contain_text("1 dead letter(s) back to pending")
            expect(result).to_contain_text("Test execution passed")  # the test report stays in view
            card.locator("[data-log] summary").click()
            expect(card.locator("[data-log-rows] tr").first).to_contain_text("l***@example.com")
            _shot(page, "leadpost-after-test-and-replay.png")
            no_sideways_scroll = "() => document.documentElement.scrollWidth <= window.innerWidth"
            assert page.evaluate(no_sideways_scroll)
            page.set_viewport_size({"width": 1024, "height": 700})  # a small laptop screen
            assert page.evaluate(no_sideways_scroll)
            expect(card.get_by_role("button", name="Test execution")).to_be_in_viewport()
            _shot(page, "leadpost-1024.png")
            page.set_viewport_size({"width": 1280, "height": 860})
            text = page.content()
            assert CANARY not in text and "lead1@example.com" not in text and "0132456789" not in text

            # The same page inside the Airflow UI: nav entry Browse → Leadpost, an iframe at /plugin/leadpost.
            page.goto(f"{base}/")
            page.get_by_role("button", name="Browse").click()
            page.get_by_role("menuitem", name="Leadpost").click()
            expect(page).to_have_url(f"{base}/plugin/leadpost", timeout=10_000)
            frame = page.frame_locator('iframe[title="Leadpost"]')
            expect(frame.locator('[data-key="vip.crm"] [data-badge]')).to_have_class(
                "badge badge-active", timeout=20_000
            )
            expect(frame.locator('[data-key="vip.crm"] [data-count="dead"]')).to_have_text("0")
            frame.get_by_role("button", name="Test execution").click()  # it works from inside the iframe too
            expect(frame.locator("[data-result-verdict]")).to_contain_text("Test execution passed")
            assert len(receiver.requests) == 2
            nav = _shot(page, "airflow-nav-leadpost.png")
            if os.environ.get("LEADPOST_UPDATE_SCREENSHOT") == "1":
                (REPO / "docs").mkdir(exist_ok=True)
                (REPO / "docs" / "screenshot.png").write_bytes(nav.read_bytes())

            dark = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="dark")
            dark.add_cookies([{"name": "_token", "value": token, "url": base}])
            dark_page = dark.new_page()
            dark_page.goto(f"{base}/leadpost/")
            expect(dark_page.locator('[data-key="vip.crm"] [data-badge]')).to_have_class("badge badge-active")
            colours = dark_page.evaluate(
                "() => [getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color]"
            )
            assert colours == ["rgb(20, 24, 29)", "rgb(230, 233, 237)"]  # dark background, light text
            _shot(dark_page, "leadpost-dark.png")
            assert problems == []
        finally:
            browser.close()
