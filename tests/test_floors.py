"""Scan floors on SQLite and PostgreSQL: later runs start above what earlier runs walked through,
and still find every lead that became pending below it."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from leadpost.activation import run_test
from leadpost.dispatch import dispatch_shard
from leadpost.ledger import (
    Selection,
    Shard,
    ShardWalk,
    count_deliveries,
    record_outcomes,
    release_claims,
    replay_dead_letters,
)
from leadpost.ledger import floors as floors_module
from leadpost.ledger.floors import action_floor, floor_basis
from leadpost.states import Outcome, OutcomeKind
from leadpost.store import lead_tags, leads, scan_floors, utcnow
from leadpost.store.importer import import_leads
from tests.leads import T0, add_leads, ledger_rows, selection, tag

UNSUBSCRIBED = "tags_none: [unsubscribed]"


def _sent_ids(receiver) -> list[int]:
    return sorted(int(r.form()["email"].removeprefix("lead").split("@")[0]) for r in receiver.requests)


def _run(store, sel, receiver, **kw) -> list[int]:
    receiver.reset()
    dispatch_shard(store, sel, Shard(sel.action_key), **kw)
    return _sent_ids(receiver)


def _floor(store, sel) -> dict | None:
    with store.connect() as conn:
        row = conn.execute(
            sa.select(scan_floors).where(scan_floors.c.action_key == sel.action_key)
        ).mappings()
        return next(iter([dict(r) for r in row]), None)


@pytest.fixture
def active(store, receiver):
    """An activated action filtering out unsubscribed leads, and 50 leads (41 to 50 unsubscribed)."""
    add_leads(store, 50)
    tag(store, range(41, 51), "unsubscribed")
    sel = selection(
        receiver.url + "/hook", filters=UNSUBSCRIBED, extra="batch_size: 7\n        concurrency: 4"
    )
    assert run_test(store, sel.trigger, sel.action).ok
    assert _run(store, sel, receiver) == list(range(1, 41))
    return sel


def test_a_later_run_starts_at_the_floor_and_finds_new_and_changed_leads(store, receiver, active):
    assert _floor(store, active)["floor_id"] == 50
    add_leads(store, 5, start=51)  # new leads, stamped long ago: above the floor they are walked
    with store.begin() as conn:  # lead 45 leaves the list the way an import does it: updated_at moves
        conn.execute(sa.delete(lead_tags).where(lead_tags.c.lead_id == 45))
        conn.execute(leads.update().where(leads.c.id == 45).values(updated_at=utcnow()))
    walk = ShardWalk(store, active, Shard(active.action_key))
    assert walk.floor is not None and walk.floor.lead_id == 50
    with store.connect() as conn:
        assert action_floor(conn, active) == walk.floor
    assert count_deliveries(store, active).pending == 6  # counted below and above the floor
    assert _run(store, active, receiver) == [45, 51, 52, 53, 54, 55]
    assert _run(store, active, receiver) == []
    assert _floor(store, active)["floor_id"] == 55


def test_the_daily_sweep_finds_leads_changed_without_moving_updated_at(store, receiver, active):
    with store.begin() as conn:  # written by other means: the tag goes, updated_at stays old
        conn.execute(sa.delete(lead_tags).where(lead_tags.c.lead_id == 46))
    assert _run(store, active, receiver) == []  # below the floor and unchanged as far as we can tell
    with store.begin() as conn:
        conn.execute(scan_floors.update().values(full_walk_at=utcnow() - timedelta(days=1, minutes=1)))
    add_leads(store, 2, start=51)
    walk = ShardWalk(store, active, Shard(active.action_key))
    assert walk.floor is not None and walk.sweep_due  # the floor still serves: what is new comes first
    token, new = walk.claim(0, limit=7)
    swept_token, swept = walk.claim(new[-1]["id"], limit=7)
    assert ([x["id"] for x in new], [x["id"] for x in swept]) == ([51, 52], [46])
    for t, page in ((token, new), (swept_token, swept)):
        release_claims(store, action_key=active.action_key, token=t, lead_ids=[x["id"] for x in page])
    assert _run(store, active, receiver) == [46, 51, 52]
    assert _floor(store, active)["full_walk_at"] > utcnow() - timedelta(minutes=1)


def test_an_import_of_back_dated_leads_lowers_the_floors(store, receiver, active, tmp_path):
    csv = tmp_path / "leads.csv"
    csv.write_text(
        "id,email,tags,updated_at\n"
        f"47,lead47@example.com,,{(T0 + timedelta(days=1)).isoformat()}\n"  # old, but newer than stored
        "3,someone.new@example.com,,2026-01-01T00:00:00Z\n",  # changes lead 3's email: already delivered
        encoding="utf-8",
    )
    summary = import_leads(store, csv)
    assert (summary.updated, summary.unchanged, summary.rejected) == (2, 0, 0), summary
    assert _floor(store, active)["floor_id"] == 2
    assert _run(store, active, receiver) == [47]


def test_reopened_delivery_rows_below_the_floor_are_claimed_again(store):
    add_leads(store, 30)
    sel = selection("https://x.com/p")
    shard = Shard(sel.action_key)
    walk = ShardWalk(store, sel, shard)
    token, page = walk.claim(0, limit=100)
    rejected = Outcome(OutcomeKind.REJECTED, 422, "HTTP 422")
    ok = Outcome(OutcomeKind.DELIVERED, 200)
    results = [(x["id"], rejected if x["id"] in (4, 9) else ok, 1) for x in page]
    record_outcomes(store, action_key=sel.action_key, token=token, results=results, max_attempts=3)
    assert walk.claim(page[-1]["id"], limit=100)[1] == []
    walk.finish()

    assert replay_dead_letters(store, sel.action_key) == 2
    assert count_deliveries(store, sel).pending == 2
    later = ShardWalk(store, sel, shard)
    assert later.floor is not None and later.floor.lead_id == 30
    assert [x["id"] for x in later.claim(0, limit=100)[1]] == [4, 9]


def test_changed_filters_walk_every_lead_again(store):
    add_leads(store, 30)
    strict = selection("https://x.com/p", filters="score: {gte: 20}")
    walk = ShardWalk(store, strict, Shard(strict.action_key))
    _, page = walk.claim(0, limit=100)
    assert [x["id"] for x in page] == list(range(20, 31))
    walk.claim(page[-1]["id"], limit=100)
    walk.finish()

    wider = selection("https://x.com/p", filters="score: {gte: 10}")
    again = ShardWalk(store, wider, Shard(wider.action_key))
    assert again.floor is None
    assert [x["id"] for x in again.claim(0, limit=100)[1]] == list(range(10, 20))


def test_a_run_stopped_early_keeps_its_place(store, receiver):
    add_leads(store, 40)
    sel = selection(receiver.url + "/hook", extra="batch_size: 10\n        concurrency: 4")
    assert run_test(store, sel.trigger, sel.action).ok
    first = _run(store, sel, receiver, max_leads=15)
    assert first == list(range(1, 16))
    assert _floor(store, sel)["floor_id"] == 15  # the cap: the next run walks on from here
    assert _run(store, sel, receiver) == list(range(16, 41))
    assert {r["state"] for r in ledger_rows(store, sel.action_key).values()} == {"delivered"}


def test_many_changes_below_the_floor_walk_from_zero(store, monkeypatch):
    add_leads(store, 20)
    sel = selection("https://x.com/p")
    walk = ShardWalk(store, sel, Shard(sel.action_key))
    walk.claim(0, limit=100)
    walk.claim(20, limit=100)
    walk.finish()
    with store.begin() as conn:
        conn.execute(leads.update().where(leads.c.id <= 6).values(updated_at=utcnow()))
    assert ShardWalk(store, sel, Shard(sel.action_key)).floor is not None
    monkeypatch.setattr(floors_module, "CATCH_UP_MAX", 5)
    assert ShardWalk(store, sel, Shard(sel.action_key)).floor is None


def test_birthday_floors_last_one_day_and_other_floors_do_not_depend_on_the_day(store):
    birthday = selection("https://x.com/p", filters="birthday_today: true")
    plain = selection("https://x.com/p")
    tomorrow = T0.date() + timedelta(days=1)
    assert floor_basis(birthday) != floor_basis(Selection(birthday.trigger, birthday.action, tomorrow))
    assert floor_basis(plain) == floor_basis(Selection(plain.trigger, plain.action, tomorrow))


def test_counts_use_a_floor_only_when_every_shard_has_one(store):
    add_leads(store, 40)
    sel = selection("https://x.com/p")
    walks = [ShardWalk(store, sel, Shard(sel.action_key, i, 2)) for i in range(2)]
    for walk in walks:
        walk.claim(0, limit=5)  # 5 leads of each shard claimed, the rest still pending
    walks[0].finish()
    with store.connect() as conn:
        assert action_floor(conn, sel) is None  # shard 2/2 has not walked yet
    walks[1].finish()
    with store.connect() as conn:
        assert action_floor(conn, sel).lead_id == 9  # shard 1/2 walked through 10, shard 2/2 through 9
    assert count_deliveries(store, sel).as_dict() == {
        "pending": 30,
        "in_flight": 10,
        "delivered": 0,
        "retrying": 0,
        "dead": 0,
    }


def test_resend_on_update_finds_a_changed_lead_below_the_floor(store):
    add_leads(store, 10)
    sel = selection("https://x.com/p", extra="resend_on_update: true")
    shard = Shard(sel.action_key)
    walk = ShardWalk(store, sel, shard)
    token, page = walk.claim(0, limit=100)
    ok = Outcome(OutcomeKind.DELIVERED, 200)
    record_outcomes(
        store,
        action_key=sel.action_key,
        token=token,
        results=[(x["id"], ok, 1) for x in page],
        max_attempts=3,
    )
    walk.claim(page[-1]["id"], limit=100)
    walk.finish()
    with store.begin() as conn:
        conn.execute(leads.update().where(leads.c.id == 7).values(city="Rio", updated_at=utcnow()))
    later = ShardWalk(store, sel, shard)
    assert later.floor is not None
    assert [x["id"] for x in later.claim(0, limit=100)[1]] == [7]


def test_each_shard_catches_up_on_its_own_leads(store, receiver):
    add_leads(store, 30)
    tag(store, [7, 8], "unsubscribed")
    sel = selection(
        receiver.url + "/hook", filters=UNSUBSCRIBED, extra="batch_size: 5\n        concurrency: 4"
    )
    assert run_test(store, sel.trigger, sel.action).ok
    shards = [Shard(sel.action_key, i, 2) for i in range(2)]

    def run_both() -> list[int]:
        receiver.reset()
        for shard in shards:
            dispatch_shard(store, sel, shard)
        return _sent_ids(receiver)

    assert run_both() == [i for i in range(1, 31) if i not in (7, 8)]
    with store.begin() as conn:
        conn.execute(sa.delete(lead_tags).where(lead_tags.c.lead_id.in_([7, 8])))
        conn.execute(leads.update().where(leads.c.id.in_([7, 8])).values(updated_at=utcnow()))
    assert all(ShardWalk(store, sel, shard).floor is not None for shard in shards)
    assert run_both() == [7, 8]
    assert run_both() == []
