"""Fault injection against the real pipeline: a seeded storm of failures, Retry-After, the breaker,
a dispatcher killed mid-batch, and two dispatchers racing for the same leads.

Everything is real: the receiver on 127.0.0.1 (:mod:`tests.receiver`), the SQLite file and the
local PostgreSQL, :func:`leadpost.dispatch.dispatch_shard` as the dispatch tasks call it, and
dispatcher subprocesses (:mod:`tests.dispatch_worker`) that are SIGKILLed for real. Figures the
issue quotes are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path

import pytest
import sqlalchemy as sa

from leadpost.activation import run_test
from leadpost.config import load_triggers
from leadpost.dispatch import Breaker, ShardReport, dispatch_shard
from leadpost.hook import LeadPostHook
from leadpost.ledger import Selection, Shard, count_deliveries, get_action_state
from leadpost.states import ActionStatus, DeliveryState
from leadpost.store import deliveries
from tests.conftest import REPO
from tests.leads import T0, add_leads, ledger_rows
from tests.receiver import Receiver, Recorded, Reply

__all__: list[str] = []

# 1. the seeded storm
STORM_LEADS = 2000
STORM_SEED = 20261102
STORM_MAX_ATTEMPTS = 4
STORM_PARALLELISM = 3
STORM_MAX_RUNS = 10
# 3. the breaker
BREAKER_LEADS = 300
BREAKER_CONCURRENCY = 4
# 4. the crash
CRASH_LEADS = 240
CRASH_BATCH = 40
CRASH_CONCURRENCY = 8
# The receiver answers the third page's first 7 requests at once and holds the next 8 (uneven
# latency, the usual case): the kill then finds 7 answered-but-unrecorded leads and 8 in flight.
CRASH_ANSWERED = CRASH_CONCURRENCY - 1
CRASH_KILL_AFTER = 2 * CRASH_BATCH + CRASH_ANSWERED + CRASH_CONCURRENCY
CRASH_HELD_S = 30.0
CLAIM_TTL_S = 2
# 5. two dispatchers
RACE_LEADS = 600
WORKER_TIMEOUT_S = 90


# --- helpers ----------------------------------------------------------------------------------


def _write_action(tmp_path: Path, url: str, *, extra: str = "") -> tuple[Path, Selection]:
    """A one-action trigger posting email and name to ``url``; returns the file and its selection."""
    path = tmp_path / "triggers.yaml"
    path.write_text(
        textwrap.dedent(
            """
            triggers:
              - id: t
                actions:
                  - id: a
                    url: {url}
                    fields: {{email: email, name: nome}}
            """
        ).format(url=url)
        + "".join(f"        {line}\n" for line in extra.splitlines())
    )
    trigger, action = load_triggers(path).resolve("t.a")
    return path, Selection(trigger, action, T0.date())


def _activate(engine: sa.Engine, sel: Selection, receiver: Receiver) -> None:
    report = run_test(engine, sel.trigger, sel.action)
    assert report.ok, report.render()
    receiver.reset()  # the test execution is not a delivery: count only what dispatch sends


def _status(engine: sa.Engine, sel: Selection) -> ActionStatus:
    return get_action_state(engine, sel.action_key, fingerprint=sel.action.fingerprint()).status


def _run_all_shards(engine: sa.Engine, sel: Selection, **kwargs) -> list[ShardReport]:
    """One dispatch run: every shard at once, as the mapped dispatch tasks of a DAG run do."""
    count = sel.action.parallelism
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [
            pool.submit(dispatch_shard, engine, sel, Shard(sel.action_key, i, count), **kwargs)
            for i in range(count)
        ]
        return [f.result() for f in futures]


def _make_retries_due(engine: sa.Engine, action_key: str) -> int:
    """Move every ``retrying`` row's next attempt into the past: the time between runs, skipped."""
    d = deliveries.c
    past = datetime.now(UTC) - timedelta(seconds=1)
    with engine.begin() as conn:
        result = conn.execute(
            deliveries.update()
            .where(d.action_key == action_key, d.state == DeliveryState.RETRYING)
            .values(next_attempt_at=past)
        )
    return result.rowcount


def _is_2xx(rec: Recorded) -> bool:
    return rec.status is not None and 200 <= rec.status < 300


def _successes(receiver: Receiver) -> Counter[str]:
    """2xx answers per Idempotency-Key, as the receiver saw them."""
    return Counter(rec.header("Idempotency-Key") for rec in receiver.requests if _is_2xx(rec))


def _keys_by_lead(sel: Selection, lead_ids) -> dict[int, str]:
    hook = LeadPostHook(sel.action, action_key=sel.action_key)
    return {i: hook.idempotency_key(i, T0) for i in lead_ids}


def _store_url(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _start_worker(engine: sa.Engine, triggers: Path, action_key: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.dispatch_worker", "--store", _store_url(engine)]
    cmd += ["--triggers", str(triggers), "--action", action_key, *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=WORKER_TIMEOUT_S)
    assert proc.returncode == 0, f"dispatch worker failed ({proc.returncode}):\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = WORKER_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"dispatch worker exited early ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"dispatch worker not ready after {timeout:g}s"
        time.sleep(0.02)


# --- 1. a seeded storm of failures ------------------------------------------------------------


def test_a_seeded_storm_ends_with_every_lead_delivered_once_or_dead_lettered_with_its_reason(
    store, receiver, tmp_path
):
    """2 000 leads against a receiver answering a seeded mix of 200/500/503/429/reset/404.

    How time is handled, honestly: in-run retries are off (run budget 0 s), so every run makes
    exactly one attempt per due lead and the ledger alone carries the retries from run to run.
    Between runs the test moves ``next_attempt_at`` of ``retrying`` rows into the past instead of
    sleeping through the real backoff (30 s, 1 min, 2 min…), after checking that backoff was set.
    503 and 429 carry ``Retry-After: 0``: a one-second pause per 503 would stretch 2 000 leads
    over minutes; honouring a real Retry-After is proven by the Retry-After tests below.
    """
    started = time.monotonic()
    add_leads(store, STORM_LEADS)
    _, sel = _write_action(
        tmp_path,
        receiver.url + "/hook",
        extra=f"max_attempts: {STORM_MAX_ATTEMPTS}\nbatch_size: 250\n"
        f"parallelism: {STORM_PARALLELISM}\nconcurrency: 16",
    )
    _activate(store, sel, receiver)
    receiver.set_mode("random", seed=STORM_SEED, retry_after=0)

    runs = 0
    while True:
        runs += 1
        reports = _run_all_shards(store, sel, run_budget_s=0)
        assert not any(r.stopped for r in reports), [r.stopped for r in reports]
        counts = count_deliveries(store, sel)
        assert counts.in_flight == 0, f"run {runs} left claims behind: {counts}"
        if counts.pending == counts.retrying == 0:
            break
        assert runs < STORM_MAX_RUNS, f"still not settled after {runs} runs: {counts}"
        rows = ledger_rows(store, sel.action_key)
        waiting = [r for r in rows.values() if r["state"] == DeliveryState.RETRYING]
        # The backoff is real: the earliest next attempt is at least 15 s (30 s with jitter) away.
        assert all(r["next_attempt_at"] - r["updated_at"] >= timedelta(seconds=14) for r in waiting)
        assert _make_retries_due(store, sel.action_key) == len(waiting)

    rows = ledger_rows(store, sel.action_key)
    keys = _keys_by_lead(sel, range(1, STORM_LEADS + 1))
    requests_per_key = Counter(rec.header("Idempotency-Key") for rec in receiver.requests)
    successes = _successes(receiver)
    delivered = {i for i, r in rows.items() if r["state"] == DeliveryState.DELIVERED}
    dead = {i: r for i, r in rows.items() if r["state"] == DeliveryState.DEAD}
    lost = set(keys) - delivered - set(dead)
    duplicates = sorted(k for k, n in successes.items() if n > 1)
    dead_404 = sum(1 for r in dead.values() if r["last_status"] == 404)
    print(
        f"\n[storm/{store.dialect.name}] leads={STORM_LEADS} runs={runs} sent={receiver.count} "
        f"by_status={dict(sorted(receiver.stats()['by_status'].items()))} delivered={len(delivered)} "
        f"dead={len(dead)} (404: {dead_404}, out of attempts: {len(dead) - dead_404}) "
        f"duplicates={len(duplicates)} lost={len(lost)} elapsed={time.monotonic() - started:.1f}s"
    )

    assert len(rows) == STORM_LEADS and not lost, f"{len(lost)} leads lost, e.g. {sorted(lost)[:5]}"
    assert duplicates == [], f"{len(duplicates)} leads got two successful deliveries"
    # The ledger and the receiver agree lead by lead.
    assert {i for i in keys if successes[keys[i]] == 1} == delivered
    assert sum(r["attempts"] for r in rows.values()) == receiver.count, "every request is counted"
    assert max(requests_per_key.values()) <= STORM_MAX_ATTEMPTS
    for lead_id, row in dead.items():
        assert row["last_error"], f"dead letter {lead_id} has no reason"
        if row["last_status"] == 404:
            assert requests_per_key[keys[lead_id]] == row["attempts"] <= STORM_MAX_ATTEMPTS
        else:  # transient every time: dead only once out of attempts
            assert row["attempts"] == requests_per_key[keys[lead_id]] == STORM_MAX_ATTEMPTS, row
            assert (
                row["last_status"] in (500, 503, 429)
                or "reset" in row["last_error"]
                or ("closed the connection" in row["last_error"])
            ), row
    assert len(delivered) > STORM_LEADS * 0.8 and dead_404 > 0 and len(dead) > dead_404


# --- 2. Retry-After is honoured ---------------------------------------------------------------

RA_LEADS = 8
RA_CONCURRENCY = 4
RA_FIRST_ANSWER_S = 0.1  # the 503/429 answers first...
RA_OTHERS_S = 0.4  # ...while the other requests in flight are still waiting for theirs


def _retry_after_header(form: str) -> tuple[str, float | None, float | None]:
    """The header value, and the pause it names: seconds from the answer, or a wall-clock time."""
    if form == "seconds":
        return "1", 1.0, None
    wall = math.ceil(time.time()) + 2  # an HTTP date has whole seconds: 1 to 2 s from now
    return formatdate(wall, usegmt=True), None, float(wall)


@pytest.mark.parametrize("status", [503, 429])
@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_holds_every_request_to_the_endpoint_until_the_time_it_names(
    sqlite_store, receiver, tmp_path, status, form
):
    """A Retry-After speaks for the endpoint: after it, no request at all (this lead or any other)
    arrives before the time it named. Requests already in flight when it came are not held."""
    add_leads(sqlite_store, RA_LEADS)
    _, sel = _write_action(tmp_path, receiver.url + "/hook", extra=f"concurrency: {RA_CONCURRENCY}")
    _activate(sqlite_store, sel, receiver)
    value, pause_s, until_wall = _retry_after_header(form)
    receiver.set_mode("ok", delay_s=RA_OTHERS_S)
    receiver.script(Reply(status=status, headers={"Retry-After": value}, delay_s=RA_FIRST_ANSWER_S))
    wall_offset = time.time() - time.monotonic()

    report = dispatch_shard(sqlite_store, sel, Shard(sel.action_key))

    assert report.delivered == RA_LEADS and report.requests == RA_LEADS + 1
    recs = sorted(receiver.requests, key=lambda r: r.at)
    (refused,) = [r for r in recs if r.status == status]
    # The client cannot know before the answer left the receiver.
    known_at = refused.at + RA_FIRST_ANSWER_S
    allowed_from = known_at + pause_s if pause_s is not None else until_wall - wall_offset
    early = [round(r.at - known_at, 3) for r in recs if known_at <= r.at < allowed_from - 0.01]
    assert early == [], f"requests {early} s after the {status} arrived before the time Retry-After named"
    key = refused.header("Idempotency-Key")
    again = [r for r in recs if r.header("Idempotency-Key") == key and r is not refused]
    assert len(again) == 1 and again[0].at >= allowed_from - 0.01 and _is_2xx(again[0])
    assert any(r.at >= allowed_from for r in recs if r.header("Idempotency-Key") != key)


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_a_retry_after_beyond_the_run_is_kept_in_the_ledger_and_honoured_by_later_runs(
    sqlite_store, receiver, tmp_path, form
):
    add_leads(sqlite_store, 1)
    _, sel = _write_action(tmp_path, receiver.url + "/hook", extra="concurrency: 1")
    _activate(sqlite_store, sel, receiver)
    value = "120" if form == "seconds" else formatdate(time.time() + 120, usegmt=True)
    receiver.script(Reply(status=503, headers={"Retry-After": value}))
    before = datetime.now(UTC)

    report = dispatch_shard(sqlite_store, sel, Shard(sel.action_key), run_budget_s=5)

    assert (report.requests, report.retrying) == (1, 1)
    row = ledger_rows(sqlite_store, sel.action_key)[1]
    assert row["state"] == DeliveryState.RETRYING and row["last_status"] == 503
    assert row["next_attempt_at"] >= before + timedelta(seconds=118), row["next_attempt_at"] - before
    again = dispatch_shard(sqlite_store, sel, Shard(sel.action_key))
    assert again.claimed == 0 and receiver.count == 1, "a later run must not send before Retry-After"


# --- 3. the breaker ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["500", "reset"])
def test_the_breaker_stops_a_dead_endpoint_and_a_passing_test_brings_the_action_back(
    store, receiver, tmp_path, mode
):
    add_leads(store, BREAKER_LEADS)
    _, sel = _write_action(
        tmp_path, receiver.url + "/hook", extra=f"concurrency: {BREAKER_CONCURRENCY}\nparallelism: 2"
    )
    _activate(store, sel, receiver)
    receiver.set_mode(mode)
    # As dispatch sizes it: this many consecutive failures trip the breaker.
    threshold = max(Breaker().consecutive, 2 * BREAKER_CONCURRENCY)

    # A 1 s budget keeps in-run retries (the first backoff fits) without waiting through all four.
    first, second = (
        dispatch_shard(store, sel, Shard(sel.action_key, i, 2), run_budget_s=1) for i in range(2)
    )

    sent = receiver.count
    print(
        f"\n[breaker/{store.dialect.name}/{mode}] threshold={threshold} requests={sent} stopped={first.stopped!r}"
    )
    assert first.stopped and "consecutive failures" in first.stopped
    # Within its threshold: requests already in flight (one per other worker) may still land.
    assert threshold <= sent <= threshold + BREAKER_CONCURRENCY - 1, sent
    assert second.claimed == 0, "the other shard must see the action failing and send nothing"
    assert _status(store, sel) is ActionStatus.FAILING
    counts = count_deliveries(store, sel)
    assert (counts.delivered, counts.dead, counts.in_flight) == (0, 0, 0), counts
    assert counts.pending + counts.retrying == BREAKER_LEADS, counts
    assert counts.pending >= BREAKER_LEADS - threshold, "unsent leads are released, untouched"

    # Failing: runs send nothing, and a test against the still-dead endpoint does not resume it.
    assert sum(r.claimed for r in _run_all_shards(store, sel)) == 0 and receiver.count == sent
    assert not run_test(store, sel.trigger, sel.action).ok
    assert _status(store, sel) is ActionStatus.FAILING

    receiver.set_mode("ok")
    report = run_test(store, sel.trigger, sel.action)
    assert report.ok and report.status is ActionStatus.ACTIVE, report.render()
    receiver.reset()
    retrying = {
        i for i, r in ledger_rows(store, sel.action_key).items() if r["state"] == DeliveryState.RETRYING
    }
    delivered = sum(r.delivered for r in _run_all_shards(store, sel))
    # The next run sends every lead that never got an answer; those that failed keep their backoff.
    assert delivered == BREAKER_LEADS - len(retrying)
    _make_retries_due(store, sel.action_key)
    delivered += sum(r.delivered for r in _run_all_shards(store, sel))
    assert delivered == BREAKER_LEADS and count_deliveries(store, sel).delivered == BREAKER_LEADS
    assert set(_successes(receiver).values()) == {1}


# --- 4. a dispatcher killed mid-batch ---------------------------------------------------------


def test_a_dispatcher_killed_mid_batch_loses_nothing_and_resends_at_most_what_was_in_flight(
    store, receiver, tmp_path, monkeypatch
):
    monkeypatch.setenv("LEADPOST_CLAIM_TTL_S", str(CLAIM_TTL_S))  # the worker's claims expire fast
    add_leads(store, CRASH_LEADS)
    path, sel = _write_action(
        tmp_path,
        receiver.url + "/hook",
        extra=f"batch_size: {CRASH_BATCH}\nconcurrency: {CRASH_CONCURRENCY}\nparallelism: 1",
    )
    _activate(store, sel, receiver)
    fast = 2 * CRASH_BATCH + CRASH_ANSWERED
    receiver.script(*[Reply()] * fast, *[Reply(delay_s=CRASH_HELD_S)] * CRASH_CONCURRENCY)

    worker = _start_worker(store, path, sel.action_key)
    try:
        receiver.wait_for(CRASH_KILL_AFTER, timeout=WORKER_TIMEOUT_S)
        time.sleep(0.3)  # every worker is now waiting on a held answer: nothing more is sent
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=WORKER_TIMEOUT_S)
    killed_at = time.monotonic()
    seen_before_kill = receiver.count
    assert worker.returncode == -signal.SIGKILL
    assert seen_before_kill == CRASH_KILL_AFTER, "the dispatcher never has more than concurrency in flight"
    left_claimed = count_deliveries(store, sel).in_flight
    assert left_claimed > 0, "a killed dispatcher leaves its claims behind"

    time.sleep(max(0.0, killed_at + CLAIM_TTL_S + 0.3 - time.monotonic()))  # let the dead claims expire
    rerun = dispatch_shard(store, sel, Shard(sel.action_key))

    successes = _successes(receiver)
    duplicates = sorted(k for k, n in successes.items() if n > 1)
    counts = count_deliveries(store, sel)
    print(
        f"\n[crash/{store.dialect.name}] leads={CRASH_LEADS} concurrency={CRASH_CONCURRENCY} "
        f"batch={CRASH_BATCH} seen_before_kill={seen_before_kill} claims_left={left_claimed} "
        f"rerun_sent={rerun.requests} delivered_unique={len(successes)} duplicates={len(duplicates)} "
        f"lost={CRASH_LEADS - counts.delivered}"
    )
    assert counts.delivered == CRASH_LEADS and (counts.pending, counts.in_flight, counts.dead) == (0, 0, 0)
    assert len(successes) == CRASH_LEADS, "every lead reached the receiver"
    # Each lead travels under one key, whichever dispatcher sent it: the receiver can dedupe.
    keys = _keys_by_lead(sel, range(1, CRASH_LEADS + 1))
    by_email: dict[str, set[str]] = {}
    for rec in receiver.requests:
        by_email.setdefault(rec.form()["email"], set()).add(rec.header("Idempotency-Key"))
    assert all(by_email[f"lead{i}@example.com"] == {keys[i]} for i in keys)
    assert len(duplicates) <= CRASH_CONCURRENCY, (
        f"{len(duplicates)} leads were delivered twice after the crash; at most the "
        f"{CRASH_CONCURRENCY} requests in flight may be resent"
    )


# --- 5. two dispatchers racing ----------------------------------------------------------------


@pytest.mark.parametrize("store", ["postgres", "sqlite"], indirect=True)
def test_two_dispatchers_on_the_same_shard_never_send_a_lead_twice(store, receiver, tmp_path):
    add_leads(store, RACE_LEADS)
    path, sel = _write_action(
        tmp_path, receiver.url + "/hook", extra="batch_size: 50\nconcurrency: 8\nparallelism: 1"
    )
    _activate(store, sel, receiver)
    receiver.set_mode("ok", delay_s=0.01)  # enough for the two runs to overlap throughout
    go = tmp_path / "go"
    workers, ready = [], []
    for n in range(2):
        ready.append(tmp_path / f"ready-{n}")
        workers.append(_start_worker(store, path, sel.action_key, "--ready", str(ready[n]), "--go", str(go)))
    try:
        for n, proc in enumerate(workers):
            _wait_for_file(ready[n], proc)
        go.write_text("go")
        reports = [_finish(proc) for proc in workers]
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    per_key = Counter(rec.header("Idempotency-Key") for rec in receiver.requests)
    print(
        f"\n[race/{store.dialect.name}] leads={RACE_LEADS} "
        f"worker_delivered={[r['delivered'] for r in reports]} sent={receiver.count} "
        f"unique_keys={len(per_key)} max_per_key={max(per_key.values())}"
    )
    assert set(per_key.values()) == {1}, f"{sum(n > 1 for n in per_key.values())} leads sent twice"
    assert receiver.count == len(per_key) == RACE_LEADS
    assert sum(r["delivered"] for r in reports) == RACE_LEADS
    assert count_deliveries(store, sel).delivered == RACE_LEADS
