"""Dispatch against the real receiver: each lead once, shards, re-runs, outcomes and the breaker."""

from __future__ import annotations

import time

from leadpost.activation import run_test
from leadpost.dispatch import dispatch_shard
from leadpost.ledger import Shard, count_deliveries, get_action_state
from leadpost.states import ActionStatus, DeliveryState
from tests.leads import add_leads, ledger_rows, selection
from tests.receiver import Reply


def _activate(engine, sel):
    report = run_test(engine, sel.trigger, sel.action)
    assert report.ok, report.render()


def _keys(receiver):
    return [r.header("Idempotency-Key") for r in receiver.requests]


def test_every_pending_lead_goes_out_once_and_a_rerun_sends_nothing(store, receiver):
    add_leads(store, 230)
    sel = selection(receiver.url + "/hook", extra="batch_size: 50\n        concurrency: 8")
    _activate(store, sel)
    receiver.reset()
    report = dispatch_shard(store, sel, Shard(sel.action_key))
    assert (report.claimed, report.delivered, report.pages) == (230, 230, 5)
    keys = _keys(receiver)
    assert len(keys) == len(set(keys)) == 230
    assert {r.form()["email"] for r in receiver.requests} == {f"lead{i}@example.com" for i in range(1, 231)}
    assert dispatch_shard(store, sel, Shard(sel.action_key)).claimed == 0
    assert len(receiver.requests) == 230
    assert count_deliveries(store, sel).delivered == 230


def test_shards_split_the_work_without_overlap(store, receiver):
    add_leads(store, 101)
    sel = selection(receiver.url + "/hook", extra="parallelism: 3")
    _activate(store, sel)
    receiver.reset()
    reports = [dispatch_shard(store, sel, Shard(sel.action_key, i, 3)) for i in range(3)]
    assert sum(r.delivered for r in reports) == 101 and all(r.delivered > 0 for r in reports)
    assert len(set(_keys(receiver))) == len(receiver.requests) == 101


def test_an_untested_action_sends_nothing_and_its_leads_stay_pending(store, receiver):
    add_leads(store, 5)
    sel = selection(receiver.url + "/hook")
    report = dispatch_shard(store, sel, Shard(sel.action_key))
    assert report.claimed == 0 and receiver.requests == []
    assert count_deliveries(store, sel).pending == 5
    _activate(store, sel)
    assert dispatch_shard(store, sel, Shard(sel.action_key)).delivered == 5


def test_rejected_leads_become_dead_letters_with_their_reason(store, receiver):
    add_leads(store, 3)
    sel = selection(receiver.url + "/hook")
    _activate(store, sel)
    receiver.script(Reply(status=200), Reply(status=422, body=b"email invalido"), Reply(status=200))
    report = dispatch_shard(store, sel, Shard(sel.action_key), hook=None)
    assert report.delivered == 2 and report.dead == 1
    dead = [row for row in ledger_rows(store, sel.action_key).values() if row["state"] == DeliveryState.DEAD]
    assert len(dead) == 1 and dead[0]["last_status"] == 422 and "422" in dead[0]["last_error"]


def test_transient_failures_are_retried_within_the_run_honouring_retry_after(store, receiver):
    add_leads(store, 1)
    sel = selection(receiver.url + "/hook", extra="concurrency: 1")
    _activate(store, sel)
    receiver.reset()
    receiver.script(Reply(status=503, headers={"Retry-After": "1"}), Reply(status=500))
    report = dispatch_shard(store, sel, Shard(sel.action_key))
    assert report.delivered == 1 and report.requests == 3
    first, second, third = receiver.requests
    assert second.at - first.at >= 0.95, "Retry-After: 1 must hold the next request for a second"
    assert (
        first.header("Idempotency-Key") == second.header("Idempotency-Key") == third.header("Idempotency-Key")
    )
    row = ledger_rows(store, sel.action_key)[1]
    assert row["attempts"] == 3 and row["state"] == DeliveryState.DELIVERED


def test_401_turns_the_action_failing_and_keeps_the_leads(store, receiver):
    add_leads(store, 40)
    sel = selection(receiver.url + "/hook", extra="concurrency: 1")
    _activate(store, sel)
    receiver.reset()
    receiver.set_mode("401")
    report = dispatch_shard(store, sel, Shard(sel.action_key))
    assert report.stopped and "credentials" in report.stopped
    assert len(receiver.requests) == 1, "the breaker stops at the first 401"
    state = get_action_state(store, sel.action_key, fingerprint=sel.action.fingerprint())
    assert state.status is ActionStatus.FAILING
    counts = count_deliveries(store, sel)
    assert counts.pending == 40 and counts.dead == 0
    receiver.set_mode("ok")
    _activate(store, sel)  # a passing re-test resumes the action
    assert dispatch_shard(store, sel, Shard(sel.action_key)).delivered == 40


def test_410_disables_the_action(store, receiver):
    add_leads(store, 3)
    sel = selection(receiver.url + "/hook", extra="concurrency: 1")
    _activate(store, sel)
    receiver.set_mode("410")
    dispatch_shard(store, sel, Shard(sel.action_key))
    assert (
        get_action_state(store, sel.action_key, fingerprint=sel.action.fingerprint()).status
        is ActionStatus.DISABLED
    )


def test_a_dead_endpoint_trips_the_breaker_instead_of_burning_every_lead(store, receiver):
    add_leads(store, 500)
    sel = selection(receiver.url + "/hook", extra="concurrency: 4\n        batch_size: 100")
    _activate(store, sel)
    receiver.reset()
    receiver.set_mode("500")
    t0 = time.monotonic()
    report = dispatch_shard(store, sel, Shard(sel.action_key), run_budget_s=2)
    assert report.stopped and "consecutive failures" in report.stopped
    assert len(receiver.requests) < 200, len(receiver.requests)
    assert time.monotonic() - t0 < 60
    counts = count_deliveries(store, sel)
    assert counts.delivered == 0 and counts.dead == 0
    assert counts.pending + counts.retrying == 500, counts


def test_the_recorder_never_leaves_senders_idle_behind_a_part_filled_group():
    """Answered requests below a full group are recorded as soon as every slot is taken."""
    import asyncio

    from leadpost.dispatch import Recorder
    from leadpost.states import Outcome, OutcomeKind

    written: list[list[int]] = []
    ok = Outcome(OutcomeKind.DELIVERED, 200)

    async def scenario() -> None:
        recorder = Recorder(
            lambda _token, batch: written.append([r[0] for r in batch]), flush_at=4, ceiling=8
        )
        for _ in range(8):
            await recorder.reserve()
        for lead_id in (1, 2, 3):  # three answered, five still in flight: no full group yet
            recorder.add("token", (lead_id, ok, 1))
        await asyncio.wait_for(recorder.reserve(), timeout=5)  # must not wait for the held five
        await recorder.drain()

    asyncio.run(scenario())
    assert written == [[1, 2, 3]]
