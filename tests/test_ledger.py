"""The delivery ledger on SQLite and PostgreSQL: claims, outcomes, counts, dead letters, status."""

from __future__ import annotations

import threading
from datetime import timedelta

from leadpost.ledger import (
    Shard,
    claim_batch,
    count_deliveries,
    get_action_state,
    list_dead_letters,
    record_outcomes,
    record_test,
    release_claims,
    replay_dead_letters,
    set_action_status,
)
from leadpost.states import ActionStatus, DeliveryState, Outcome, OutcomeKind
from leadpost.store import leads
from tests.leads import T0, add_leads, ledger_rows, selection

OK = Outcome(OutcomeKind.DELIVERED, 200)
NOW = T0 + timedelta(hours=1)


def _deliver_all(store, sel):
    """Claim every pending lead of ``sel`` and record it delivered."""
    token, page = claim_batch(store, sel, now=NOW)
    results = [(x["id"], OK, 1) for x in page]
    record_outcomes(store, action_key=sel.action_key, token=token, results=results, max_attempts=3, now=NOW)


def test_a_claimed_page_is_not_claimed_again_until_its_claim_expires(store):
    add_leads(store, 10)
    sel = selection("https://x.com/p")
    _, first = claim_batch(store, sel, limit=4, now=NOW)
    assert [lead["id"] for lead in first] == [1, 2, 3, 4]
    assert first[0]["email"] == "lead1@example.com" and first[0]["name"] == "Lead Ñandú 1"
    _, again = claim_batch(store, sel, limit=100, now=NOW)
    assert [lead["id"] for lead in again] == [5, 6, 7, 8, 9, 10]
    assert claim_batch(store, sel, limit=100, now=NOW)[1] == []
    # the dispatcher died: after the TTL its leads can be claimed by someone else
    later = NOW + timedelta(hours=2)
    _, expired = claim_batch(store, sel, limit=100, now=later)
    assert [lead["id"] for lead in expired] == list(range(1, 11))


def test_delivered_leads_are_never_claimed_again(store):
    add_leads(store, 3)
    sel = selection("https://x.com/p")
    _deliver_all(store, sel)
    assert claim_batch(store, sel, now=NOW + timedelta(days=30))[1] == []
    rows = ledger_rows(store, sel.action_key)
    assert {r["state"] for r in rows.values()} == {DeliveryState.DELIVERED}
    assert count_deliveries(store, sel, now=NOW).as_dict() == {
        "pending": 0,
        "in_flight": 0,
        "delivered": 3,
        "retrying": 0,
        "dead": 0,
    }


def test_resend_on_update_claims_a_lead_again_when_it_changes(store):
    add_leads(store, 2)
    plain = selection("https://x.com/p", action="plain")
    resend = selection("https://x.com/p", action="resend", extra="resend_on_update: true")
    for sel in (plain, resend):
        _deliver_all(store, sel)
    with store.begin() as conn:
        conn.execute(leads.update().where(leads.c.id == 2).values(updated_at=NOW, city="Rio"))
    assert claim_batch(store, plain, now=NOW)[1] == []
    assert [x["id"] for x in claim_batch(store, resend, now=NOW)[1]] == [2]


def test_transient_failures_retry_later_then_become_dead_letters(store):
    add_leads(store, 1)
    sel = selection("https://x.com/p")
    now = NOW
    for attempt in range(1, 4):
        token, page = claim_batch(store, sel, now=now)
        assert [x["id"] for x in page] == [1], f"attempt {attempt}"
        failure = Outcome(OutcomeKind.TRANSIENT, 503, "HTTP 503", retry_after_s=120)
        record_outcomes(
            store, action_key=sel.action_key, token=token, results=[(1, failure, 1)], max_attempts=3, now=now
        )
        row = ledger_rows(store, sel.action_key)[1]
        if attempt < 3:
            assert row["state"] == DeliveryState.RETRYING
            assert row["next_attempt_at"] >= now + timedelta(seconds=120)  # Retry-After honoured
            assert claim_batch(store, sel, now=now)[1] == []  # not due yet
            now = row["next_attempt_at"] + timedelta(seconds=1)
    row = ledger_rows(store, sel.action_key)[1]
    assert (row["state"], row["attempts"], row["last_status"]) == (DeliveryState.DEAD, 3, 503)
    letters = list_dead_letters(store, sel.action_key)
    assert [(x.lead_id, x.last_status, x.attempts) for x in letters] == [(1, 503, 3)]
    assert replay_dead_letters(store, sel.action_key, status=404) == 0
    assert replay_dead_letters(store, sel.action_key, status=503) == 1
    assert [x["id"] for x in claim_batch(store, sel, now=now)[1]] == [1]


def test_rejections_are_dead_at_once_and_auth_failures_leave_leads_pending(store):
    add_leads(store, 3)
    sel = selection("https://x.com/p")
    token, _ = claim_batch(store, sel, now=NOW)
    results = [
        (1, Outcome(OutcomeKind.REJECTED, 422, "HTTP 422"), 1),
        (2, Outcome(OutcomeKind.AUTH_FAILED, 401, "HTTP 401"), 1),
    ]
    record_outcomes(store, action_key=sel.action_key, token=token, results=results, max_attempts=8, now=NOW)
    release_claims(store, action_key=sel.action_key, token=token, lead_ids=[3])
    rows = ledger_rows(store, sel.action_key)
    assert rows[1]["state"] == DeliveryState.DEAD and rows[1]["last_error"] == "HTTP 422"
    assert rows[2]["state"] == DeliveryState.PENDING and rows[3]["state"] == DeliveryState.PENDING
    assert rows[3]["attempts"] == 0
    assert count_deliveries(store, sel, now=NOW).pending == 2


def test_a_stale_dispatcher_cannot_overwrite_the_one_that_took_over(store):
    add_leads(store, 1)
    sel = selection("https://x.com/p")
    stale_token, _ = claim_batch(store, sel, now=NOW)
    fresh_token, _ = claim_batch(store, sel, now=NOW + timedelta(hours=2))
    record_outcomes(store, action_key=sel.action_key, token=fresh_token, results=[(1, OK, 1)], max_attempts=3)
    failure = Outcome(OutcomeKind.REJECTED, 400, "HTTP 400")
    record_outcomes(
        store, action_key=sel.action_key, token=stale_token, results=[(1, failure, 1)], max_attempts=3
    )
    assert ledger_rows(store, sel.action_key)[1]["state"] == DeliveryState.DELIVERED


def test_shards_are_disjoint_and_cover_every_lead(store):
    add_leads(store, 103)
    sel = selection("https://x.com/p")
    seen: list[int] = []
    for index in range(4):
        _, page = claim_batch(store, sel, shard=Shard(sel.action_key, index, 4), limit=1000, now=NOW)
        assert all(x["id"] % 4 == index for x in page)
        seen += [x["id"] for x in page]
    assert sorted(seen) == list(range(1, 104))


def test_concurrent_claimers_never_own_the_same_lead(store):
    add_leads(store, 600)
    sel = selection("https://x.com/p")
    owned: list[list[int]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def claimer(i: int) -> None:
        barrier.wait()
        after = 0
        while True:
            _, page = claim_batch(store, sel, after_id=after, limit=50, now=NOW)
            if not page:  # nothing left, or a rival won this page and carries on
                return
            owned[i] += [x["id"] for x in page]
            after = page[-1]["id"]

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [lead for mine in owned for lead in mine]
    assert len(everything) == len(set(everything)) == 600


def test_inactive_leads_are_never_claimed(store):
    add_leads(store, 2)
    add_leads(store, 2, start=3, status="inactive")
    sel = selection("https://x.com/p")
    assert [x["id"] for x in claim_batch(store, sel, now=NOW)[1]] == [1, 2]


def test_action_status_follows_its_fingerprint(store):
    key = "t.a"
    assert get_action_state(store, key, fingerprint="f1").status is ActionStatus.UNTESTED
    assert (
        record_test(store, key, fingerprint="f1", ok=False, status_code=404, message="HTTP 404")
        is ActionStatus.UNTESTED
    )
    assert (
        record_test(store, key, fingerprint="f1", ok=True, status_code=200, message="HTTP 200")
        is ActionStatus.ACTIVE
    )
    assert get_action_state(store, key, fingerprint="f1").can_send
    changed = get_action_state(store, key, fingerprint="f2")
    assert changed.status is ActionStatus.UNTESTED and "configuration changed" in changed.reason
    assert set_action_status(store, key, ActionStatus.FAILING, reason="HTTP 401")
    assert not set_action_status(store, key, ActionStatus.FAILING, reason="HTTP 401")  # logged once
    assert get_action_state(store, key, fingerprint="f1").status is ActionStatus.FAILING
    record_test(store, key, fingerprint="f1", ok=True, status_code=200, message="HTTP 200")
    assert get_action_state(store, key, fingerprint="f1").status is ActionStatus.ACTIVE
