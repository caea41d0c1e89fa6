"""`make bench`: how fast leadpost pushes leads, next to the HTTP clients DAG authors would write.

One run measures, against local receivers running as their own processes (one answers at once,
one adds 50 ms per request), the leads per second of:

a. the naive pattern: a new ``HttpHook(method="POST", http_conn_id=...)`` + ``.run()`` per lead;
b. a raw pooled aiohttp client (one session, ``TCPConnector(limit=C)``, C workers on a queue);
c. leadpost's ``dispatch_shard`` with claims and ledger writes over a SQLite store, one shard;
d. the whole trigger DAG through ``airflow dags test`` in a fresh AIRFLOW_HOME;

then, on SQLite and PostgreSQL stores of 10 k and 1 M leads, the pending-selection time per page
and the peak memory of a dispatch process. Every measurement runs in its own process; with two
or more cores the clients are pinned to one core and the receivers to another. Results go to
stdout and to ``bench_results/latest.md``; targets are printed as PASS/MISS, never asserted.

Usage: ``python scripts/bench.py [--quick] [--only http,dag,store] [--profile]``.
``--profile`` samples (c) with py-spy (every thread) into ``bench_results/profile-*.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import gc
import hashlib
import io
import json
import os
import platform
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

__all__ = ["FULL", "QUICK", "Plan", "main"]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "bench_results" / "latest.md"
MARK = "@@bench@@ "
PG_ADMIN_DSN = os.environ.get("LEADPOST_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SLOW_MS = 50
PAGE = 500
FORM_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
# The demo's action: every client sends the same static token and six mapped fields.
FIELDS = {
    "email": "email",
    "name": "nome",
    "phone": "telefone",
    "city": "cidade",
    "state": "estado",
    "birth_date": "nascimento",
}
PARAMS = {"token": "0132456789"}
FILTERS = "{tags_none: [unsubscribed]}"
LEAD_COLUMNS = (
    "id", "email", "name", "birth_date", "phone", "company", "city", "state", "score", "status", "funnel",
    "captured_at", "updated_at",
)  # fmt: skip
TARGET_C_OVER_B = 0.8
TARGET_D_OVER_A = 30.0
TARGET_SELECT_MS = 1000.0
TARGET_RSS_RATIO = 1.5


@dataclass(frozen=True)
class Plan:
    """Sizes of one run, chosen so each measurement takes a few seconds to ~30 s on 2 cores.

    :param naive: leads per receiver for (a).
    :param pairs: ``(receiver, concurrency, leads for b, leads for c)``: (b) and (c) run back to back
        so both meet the same machine load.
    :param repeat: runs of each (b) and (c); the best is reported (other work shares the cores).
    :param dag_leads: leads in the store for (d).
    :param store_sizes: the small and the large store of the selection and memory runs.
    :param rss_http_leads: leads sent with HTTP by the memory runs (the same on both store sizes).
    :param loop_budget_s: time box of the claim/record walk over a store.
    """

    naive: dict[str, int]
    pairs: list[tuple[str, int, int, int]]
    repeat: int
    dag_leads: int
    dag_parallelism: int
    dag_concurrency: int
    store_sizes: tuple[int, int]
    rss_http_leads: int
    loop_budget_s: float


FULL = Plan(
    naive={"instant": 2000, "slow": 300},
    pairs=[("instant", 16, 30_000, 20_000), ("instant", 64, 30_000, 20_000), ("slow", 64, 12_000, 12_000)],
    repeat=3,
    dag_leads=30_000,
    dag_parallelism=4,
    dag_concurrency=64,
    store_sizes=(10_000, 1_000_000),
    rss_http_leads=10_000,
    loop_budget_s=30.0,
)
QUICK = Plan(
    naive={"instant": 300, "slow": 40},
    pairs=[("instant", 16, 4000, 3000), ("instant", 64, 4000, 3000), ("slow", 64, 2000, 1500)],
    repeat=1,
    dag_leads=2000,
    dag_parallelism=4,
    dag_concurrency=64,
    store_sizes=(5_000, 50_000),
    rss_http_leads=2000,
    loop_budget_s=5.0,
)


# --- helpers shared by the orchestrator and the workers ---------------------------------------


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished, waited-for children and theirs
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _process_cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _csv_leads(path: Path, n: int) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            if i >= n:
                return
            yield row


def _form_pairs(row: dict[str, str]) -> list[tuple[str, str]]:
    """The form leadpost sends for this lead: static params, then each field that has a value."""
    return [*PARAMS.items(), *((name, row[f]) for f, name in FIELDS.items() if row.get(f))]


def _triggers_yaml(triggers: list[tuple[str, str, int, int]]) -> str:
    """Triggers file text; one ``crm`` action per (trigger id, receiver url, parallelism, concurrency)."""
    fields = ", ".join(f"{k}: {v}" for k, v in FIELDS.items())
    params = ", ".join(f'{k}: "{v}"' for k, v in PARAMS.items())
    text = "triggers:\n"
    for trigger_id, url, parallelism, concurrency in triggers:
        text += (
            f"  - id: {trigger_id}\n    schedule: null\n    filters: {FILTERS}\n    actions:\n"
            f"      - id: crm\n        url: {url}/meupost\n        method: POST\n        body: form\n"
            f"        params: {{{params}}}\n        fields: {{{fields}}}\n        batch_size: {PAGE}\n"
            f"        parallelism: {parallelism}\n        concurrency: {concurrency}\n"
        )
    return text


def _selection(url: str, concurrency: int, *, trigger_id: str = "bench") -> Any:
    from leadpost.config import parse_triggers
    from leadpost.ledger import Selection

    trigger = parse_triggers(_triggers_yaml([(trigger_id, url, 1, concurrency)])).triggers[0]
    return Selection(trigger, trigger.actions[0], date.today())


def _activate(engine: Any, sel: Any) -> None:
    from leadpost.activation import run_test

    report = run_test(engine, sel.trigger, sel.action)
    if not report.ok:
        raise SystemExit(f"test execution of {report.action_key} failed: {report.message}")


# --- loading stores fast -----------------------------------------------------------------------


def _loaded_at() -> datetime:
    """``updated_at`` of every loaded lead: a store filled yesterday, as a scheduled run finds it."""
    return datetime.now(UTC) - timedelta(days=1)


def _sqlite_ts(iso: str) -> str:
    # SQLAlchemy's SQLite DATETIME text, naive UTC: what UtcDateTime stores there.
    return f"{iso[:10]} {iso[11:19]}.{iso[20:26] or '000000'}"


def _lead_rows(path: Path, n: int, now: str) -> Iterator[tuple[tuple[Any, ...], list[str]]]:
    for row in _csv_leads(path, n):
        values = (*(row[c] or None for c in LEAD_COLUMNS[:-1]), now)
        yield values, (row["tags"].split(";") if row["tags"] else [])


def load_sqlite(db_path: Path, csv_path: Path, n: int) -> None:
    """Bulk-insert ``n`` generated leads and their tags into a new SQLite store (100 k rows a transaction)."""
    from leadpost.store import get_engine, init_db

    init_db(get_engine(f"sqlite:///{db_path}")).dispose()
    con = sqlite3.connect(db_path, isolation_level=None)
    con.execute("PRAGMA synchronous=OFF")  # a scratch store: durability does not matter while loading
    now = _sqlite_ts(_loaded_at().isoformat())
    insert = f"INSERT INTO leads ({','.join(LEAD_COLUMNS)}) VALUES ({','.join('?' * len(LEAD_COLUMNS))})"
    rows: list[tuple[Any, ...]] = []
    tags: list[tuple[Any, str]] = []

    def flush() -> None:
        con.execute("BEGIN")
        con.executemany(insert, rows)
        con.executemany("INSERT INTO lead_tags (lead_id, tag) VALUES (?, ?)", tags)
        con.execute("COMMIT")
        rows.clear()
        tags.clear()

    for values, lead_tags in _lead_rows(csv_path, n, now):
        rows.append((*values[:11], _sqlite_ts(values[11]), now))
        tags.extend((values[0], t) for t in lead_tags)
        if len(rows) >= 100_000:
            flush()
    flush()
    con.close()


def load_postgres(url: str, csv_path: Path, n: int) -> None:
    """COPY ``n`` generated leads and their tags into a new PostgreSQL store, then ANALYZE."""
    from leadpost.store import get_engine, init_db

    engine = init_db(get_engine(url))
    now = _loaded_at().isoformat()
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        lead_buf, tag_buf = io.StringIO(), io.StringIO()
        leads_out, tags_out = csv.writer(lead_buf), csv.writer(tag_buf)
        copies = (
            (lead_buf, f"COPY leads ({','.join(LEAD_COLUMNS)}) FROM STDIN WITH (FORMAT csv)"),
            (tag_buf, "COPY lead_tags (lead_id, tag) FROM STDIN WITH (FORMAT csv)"),
        )

        def flush() -> None:
            for buf, sql in copies:
                buf.seek(0)
                cur.copy_expert(sql, buf)
                buf.seek(0)
                buf.truncate()

        for count, (values, lead_tags) in enumerate(_lead_rows(csv_path, n, now), 1):
            leads_out.writerow(values)  # None -> empty unquoted field -> NULL
            tags_out.writerows((values[0], t) for t in lead_tags)
            if count % 100_000 == 0:
                flush()
        flush()
        cur.execute("SELECT setval(pg_get_serial_sequence('leads', 'id'), (SELECT max(id) FROM leads))")
        cur.execute("ANALYZE")  # what autovacuum would do soon after a bulk load
        raw.commit()
    finally:
        raw.close()
    engine.dispose()


# --- workers: each runs in its own process and prints one result line -------------------------


def _timed(receiver_pid: int, fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    cpu0, rcpu0, t0 = _cpu_s(), _process_cpu_s(receiver_pid), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    return result, {
        "wall_s": wall,
        "cpu_s": _cpu_s() - cpu0,
        "receiver_cpu_s": _process_cpu_s(receiver_pid) - rcpu0,
    }


def worker_naive(url: str, csv_path: str, n: int, receiver_pid: int) -> dict[str, Any]:
    """(a) A new ``HttpHook`` + ``.run()`` per lead, one after the other (AIRFLOW_CONN_BENCH_HTTP)."""
    from airflow.providers.http.hooks.http import HttpHook

    payloads = [dict(_form_pairs(row)) for row in _csv_leads(Path(csv_path), n)]

    def send() -> int:
        for payload in payloads:
            HttpHook(method="POST", http_conn_id="bench_http").run("/meupost", data=payload)
        return len(payloads)  # run() raises on anything but a 2xx

    ok, times = _timed(receiver_pid, send)
    return {"sent": len(payloads), "ok": ok, **times}


def worker_raw(url: str, csv_path: str, n: int, concurrency: int, receiver_pid: int) -> dict[str, Any]:
    """(b) One aiohttp session, ``TCPConnector(limit=C)``, C coroutines pulling leads from a queue."""
    import aiohttp

    leads = [(row["id"], _form_pairs(row)) for row in _csv_leads(Path(csv_path), n)]
    target = f"{url}/meupost"

    async def run() -> int:
        ok = 0
        queue: asyncio.Queue[tuple[str, list[tuple[str, str]]]] = asyncio.Queue()
        for item in leads:
            queue.put_nowait(item)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

            async def worker() -> None:
                nonlocal ok
                while not queue.empty():
                    lead_id, pairs = queue.get_nowait()
                    headers = {"Content-Type": FORM_TYPE, "Idempotency-Key": f"raw-{lead_id}"}
                    async with session.post(target, data=urlencode(pairs).encode(), headers=headers) as resp:
                        await resp.read()
                        ok += 200 <= resp.status < 300

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ok

    ok, times = _timed(receiver_pid, lambda: asyncio.run(run()))
    return {"sent": len(leads), "ok": ok, **times}


def worker_leadpost(
    url: str, csv_path: str, n: int, concurrency: int, receiver_pid: int, db: str
) -> dict[str, Any]:
    """(c) ``dispatch_shard`` over a SQLite store of ``n`` leads, one shard, the action activated first."""
    from leadpost.dispatch import dispatch_shard
    from leadpost.ledger import Shard
    from leadpost.store import get_engine, init_db

    load_sqlite(Path(db), Path(csv_path), n)
    engine = init_db(get_engine(f"sqlite:///{db}"))
    sel = _selection(url, concurrency)
    _activate(engine, sel)
    report, times = _timed(receiver_pid, lambda: dispatch_shard(engine, sel, Shard(sel.action_key)))
    return {"sent": report.requests, "ok": report.delivered, **times, "report": report.as_dict()}


def worker_sendpath(url: str, csv_path: str, n: int, concurrency: int, receiver_pid: int) -> dict[str, Any]:
    """(b2) leadpost's sending path alone: ``send_leads`` over leads in hand, no claims, no ledger."""
    from leadpost.dispatch import Breaker, Feed, RateLimiter, ShardReport, send_leads
    from leadpost.hook import LeadPostHook

    sel = _selection(url, concurrency)
    hook = LeadPostHook(sel.action, action_key=sel.action_key)
    stamp = _loaded_at()
    leads = [
        {"id": int(row["id"]), **{f: row[f] or None for f in FIELDS}, "updated_at": stamp}
        for row in _csv_leads(Path(csv_path), n)
    ]

    async def run() -> list[Any]:
        async with hook.async_client(concurrency) as client:
            feed = Feed.of(leads, report=ShardReport(sel.action_key))
            limiter, breaker = RateLimiter(None), Breaker()
            deadline = time.monotonic() + 600
            return await send_leads(
                client,
                hook,
                feed,
                concurrency=concurrency,
                limiter=limiter,
                breaker=breaker,
                deadline=deadline,
            )

    results, times = _timed(receiver_pid, lambda: asyncio.run(run()))
    ok = sum(1 for _, outcome, _ in results if outcome.status == 200)
    return {"sent": len(results), "ok": ok, **times}


def worker_load(backend: str, url: str, csv_path: str, n: int) -> dict[str, Any]:
    """Create and fill one store (timed only for information)."""
    t0 = time.perf_counter()
    if backend == "sqlite":
        load_sqlite(Path(url.removeprefix("sqlite:///")), Path(csv_path), n)
    else:
        load_postgres(url, Path(csv_path), n)
    return {"load_s": time.perf_counter() - t0}


def _each_ms(fn: Callable[[], Any], reps: int = 3) -> tuple[float, list[Any]]:
    """Median wall time of ``reps`` calls, and each call's result."""
    times, results = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        results.append(fn())
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), results


def worker_select(url: str) -> dict[str, Any]:
    """One page of the pending selection, and one claim, at the start, middle and end of the ids; then
    the first page of a later run once every earlier matching lead was delivered."""
    import sqlalchemy as sa

    from leadpost.ledger import (
        Shard,
        ShardWalk,
        claim_batch,
        count_deliveries,
        pending_select,
        record_outcomes,
    )
    from leadpost.states import Outcome, OutcomeKind
    from leadpost.store import deliveries, get_engine, leads, utcnow

    engine = get_engine(url)
    dialect = engine.dialect.name
    with engine.connect() as conn:
        max_id = conn.execute(sa.select(sa.func.max(leads.c.id))).scalar_one()

    def select(sel: Any, after_id: int) -> int:
        query = pending_select(sel, dialect, now=utcnow(), shard=None, after_id=after_id, limit=PAGE)
        with engine.connect() as conn:
            return len(conn.execute(query).all())

    def claim(sel: Any, after_id: int) -> int:
        return len(claim_batch(engine, sel, after_id=after_id, limit=PAGE)[1])

    out: dict[str, Any] = {"positions": {}}
    fresh = _selection("http://127.0.0.1:9", 16, trigger_id="fresh")
    # "end" leaves room for three full pages (about 90 % of the leads match the filter)
    for label, after in (("start", 0), ("middle", max_id // 2), ("end", max_id - 4 * PAGE)):
        select_ms, rows = _each_ms(lambda a=after: select(fresh, a))
        # each claim takes the next free page after `after`: the previous ones are in flight
        claim_ms, claimed = _each_ms(lambda a=after: claim(fresh, a))
        out["positions"][label] = {
            "select_ms": select_ms,
            "rows": rows[0],
            "claim_ms": claim_ms,
            "claimed": claimed,
        }

    steady = _selection("http://127.0.0.1:9", 16, trigger_id="steady")
    now, d = utcnow(), deliveries.c
    stamp = [sa.literal(now, d.created_at.type) for _ in range(3)]
    src = sa.select(
        sa.literal(steady.action_key), leads.c.id, leads.c.updated_at, sa.literal("delivered"), sa.literal(1),
        sa.literal(200), *stamp,
    ).where(*steady.conditions(dialect), leads.c.id <= max_id - PAGE)  # fmt: skip
    cols = [d.action_key, d.lead_id, d.lead_version, d.state, d.attempts, d.last_status]
    with engine.begin() as conn:
        done = conn.execute(
            deliveries.insert().from_select([*cols, d.created_at, d.updated_at, d.delivered_at], src)
        )
        if dialect == "postgresql":
            conn.exec_driver_sql("ANALYZE leadpost_deliveries")  # autovacuum's job after a bulk insert
    select_ms, rows = _each_ms(lambda: select(steady, 0))
    count_ms, counts = _each_ms(lambda: count_deliveries(engine, steady), reps=1)
    shard = Shard(steady.action_key)

    def first_page() -> tuple[ShardWalk, str, list[dict[str, Any]]]:
        walk = ShardWalk(engine, steady, shard)
        return walk, *walk.claim(0, limit=PAGE)

    # A walk from id 0 (the first run, a filter change; the daily sweep reads the same): the history once.
    full_ms, [(walk, token, page)] = _each_ms(first_page, reps=1)
    full_claimed = len(page)
    while page:
        ok = [(lead["id"], Outcome(OutcomeKind.DELIVERED, 200), 1) for lead in page]
        record_outcomes(engine, action_key=steady.action_key, token=token, results=ok, max_attempts=8)
        token, page = walk.claim(page[-1]["id"], limit=PAGE)
    walk.finish()
    # Before the next scheduled run: PAGE new leads arrive and 100 delivered ones change.
    new_cols = [c for c in leads.c if c.name not in ("id", "email", "updated_at")]
    with engine.begin() as conn:
        copy = sa.select(
            leads.c.id + max_id,
            sa.literal("new.") + leads.c.email,
            *new_cols,
            sa.literal(now, d.created_at.type),
        )
        conn.execute(
            leads.insert().from_select(
                ["id", "email", *[c.name for c in new_cols], "updated_at"], copy.where(leads.c.id <= PAGE)
            )
        )
        conn.execute(leads.update().where(leads.c.id % (max_id // 100) == 0).values(updated_at=now))
    later_ms, [(later, _, claimed)] = _each_ms(first_page, reps=1)
    later_count_ms, later_counts = _each_ms(lambda: count_deliveries(engine, steady), reps=1)
    out["steady"] = {
        "delivered": done.rowcount,
        "select_ms": select_ms,
        "rows": rows[0],
        "count_ms": count_ms,
        "pending": counts[0].pending,
        "full_walk_ms": full_ms,
        "full_walk_claimed": full_claimed,
        "later_ms": later_ms,
        "later_claimed": len(claimed),
        "later_floor": later.floor.lead_id if later.floor else None,
        "later_count_ms": later_count_ms,
        "later_pending": later_counts[0].pending,
    }
    return out


def worker_rss(url: str, mode: str, receiver: str, cap: int | None, budget_s: float) -> dict[str, Any]:
    """Peak RSS of one dispatch process.

    ``http``: ``dispatch_shard`` with HTTP, capped at ``cap`` leads. ``loop``: the dispatch page
    loop without HTTP (claim a page, build every request, record every lead delivered), over
    every page or until ``budget_s``.
    """
    from leadpost.dispatch import dispatch_shard
    from leadpost.hook import LeadPostHook
    from leadpost.ledger import Shard, claim_batch, record_outcomes
    from leadpost.states import Outcome, OutcomeKind
    from leadpost.store import get_engine

    engine = get_engine(url)
    sel = _selection(receiver, 64, trigger_id=f"rss_{mode}")
    if mode == "http":
        _activate(engine, sel)
    gc.collect()
    base = _rss_mb()
    t0 = time.perf_counter()
    claim_ms: list[float] = []
    record_ms: list[float] = []
    if mode == "http":
        report = dispatch_shard(engine, sel, Shard(sel.action_key), max_leads=cap)
        processed, complete = report.delivered, True
    else:
        hook = LeadPostHook(sel.action, action_key=sel.action_key)
        delivered = Outcome(OutcomeKind.DELIVERED, 200)
        after, processed, complete = 0, 0, False
        while time.perf_counter() - t0 < budget_s:
            c0 = time.perf_counter()
            token, page = claim_batch(engine, sel, after_id=after, limit=PAGE)
            claim_ms.append((time.perf_counter() - c0) * 1000)
            if not page:
                complete = True
                break
            for lead in page:
                hook.build_request(lead)
            r0 = time.perf_counter()
            results = [(lead["id"], delivered, 1) for lead in page]
            record_outcomes(engine, action_key=sel.action_key, token=token, results=results, max_attempts=8)
            record_ms.append((time.perf_counter() - r0) * 1000)
            after = page[-1]["id"]
            processed += len(page)
    return {
        "base_rss_mb": base,
        "peak_rss_mb": _peak_rss_mb(),
        "processed": processed,
        "complete": complete,
        "wall_s": time.perf_counter() - t0,
        "claim_ms": statistics.median(claim_ms) if claim_ms else None,
        "record_ms": statistics.median(record_ms) if record_ms else None,
    }


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "naive": worker_naive,
    "raw": worker_raw,
    "leadpost": worker_leadpost,
    "sendpath": worker_sendpath,
    "load": worker_load,
    "select": worker_select,
    "rss": worker_rss,
}


# --- orchestration -----------------------------------------------------------------------------


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _pinned(cores: set[int] | None) -> Callable[[], None] | None:
    # preexec_fn: the orchestrator runs no threads, so forking with it is safe
    return (lambda: os.sched_setaffinity(0, cores)) if cores else None


@dataclass
class Bench:
    """The orchestrator's state: plan, environment, receivers and results."""

    plan: Plan
    tmp: Path
    client_cores: set[int] | None
    receiver_cores: set[int] | None
    profile: bool = False
    env: dict[str, str] = field(default_factory=dict)
    receivers: dict[str, Receiver] = field(default_factory=dict)
    http: list[dict[str, Any]] = field(default_factory=list)
    selects: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    def worker(self, name: str, *, profile_to: Path | None = None, **kwargs: Any) -> dict[str, Any]:
        """Run one worker in a fresh process pinned to the client core; return its result."""
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, json.dumps(kwargs)]
        if profile_to is not None:
            spy = [str(BIN / "py-spy"), "record", "--threads", "--rate", "250", "--format", "raw"]
            cmd = [*spy, "--output", str(profile_to), "--", *cmd]
        proc = subprocess.run(
            cmd, cwd=REPO, env=self.env, capture_output=True, text=True, preexec_fn=_pinned(self.client_cores)
        )
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith(MARK):
                return json.loads(line.removeprefix(MARK))
        raise SystemExit(f"bench worker {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")

    def command(self, env: dict[str, str], *args: str) -> None:
        """Run a console script of the venv (airflow, leadpost) on the client core; fail loudly."""
        proc = subprocess.run(
            [str(BIN / args[0]), *args[1:]],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            preexec_fn=_pinned(self.client_cores),
        )
        if proc.returncode != 0:
            raise SystemExit(f"`{' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


class Receiver:
    """``python -m tests.receiver --count-only`` in its own process, pinned to the receiver core."""

    def __init__(self, bench: Bench, delay_ms: int) -> None:
        port_file = bench.tmp / f"receiver-{delay_ms}.port"
        cmd = [sys.executable, "-m", "tests.receiver", "--port", "0", "--port-file", str(port_file)]
        self.proc = subprocess.Popen(
            [*cmd, "--count-only", "--delay-ms", str(delay_ms)],
            cwd=REPO,
            env=bench.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_pinned(bench.receiver_cores),
        )
        deadline = time.monotonic() + 15
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit("the local receiver did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        self.pid = self.proc.pid

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/__receiver/stats", timeout=10) as resp:  # loopback only
            return json.load(resp)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _leads_csv(bench: Bench, n: int) -> Path:
    """A generated leads CSV with at least ``n`` rows; workers read prefixes of it."""
    from leadpost.store.generate import write_leads

    for path in sorted(bench.tmp.glob("leads-*.csv"), key=lambda p: int(p.stem.split("-")[1])):
        if int(path.stem.split("-")[1]) >= n:
            return path
    path = bench.tmp / f"leads-{n}.csv"
    t0 = time.perf_counter()
    write_leads(path, n, seed=7)
    _say(f"generated {n:,} leads in {time.perf_counter() - t0:.1f} s")
    return path


def _http_row(case: str, client: str, receiver: str, concurrency: int, res: dict[str, Any]) -> dict[str, Any]:
    wall, cpu = res["wall_s"], res.get("cpu_s")
    return {
        "case": case,
        "client": client,
        "receiver": receiver,
        "C": concurrency,
        "leads": res["ok"],
        "wall_s": wall,
        "rate": res["ok"] / wall,
        "cpu_us": cpu / max(1, res["sent"]) * 1e6 if cpu is not None else None,
        "cpu_pct": cpu / wall * 100 if cpu is not None else None,
        "receiver_pct": res["receiver_cpu_s"] / wall * 100,
        "notes": res.get("notes", ""),
    }


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of repeated runs; the others are named in its notes."""
    best = max(rows, key=lambda r: r["rate"])
    if len(rows) > 1:
        others = ", ".join(_num(r["rate"]) for r in rows if r is not best)
        best["notes"] = f"best of {len(rows)} (other: {others} leads/s); {best['notes']}".rstrip("; ")
    return best


def run_http(bench: Bench) -> None:
    """(a) on both receivers, then (b) and (c) back to back for each receiver and concurrency."""
    plan = bench.plan
    sizes = [n for *_, nb, nc in plan.pairs for n in (nb, nc)] + list(plan.naive.values())
    leads_csv = str(_leads_csv(bench, max(sizes)))
    for name, n in plan.naive.items():
        rec = bench.receivers[name]
        _say(f"(a) HttpHook(...).run() per lead, {name} receiver, {n:,} leads")
        bench.env["AIRFLOW_CONN_BENCH_HTTP"] = rec.url
        res = bench.worker("naive", url=rec.url, csv_path=leads_csv, n=n, receiver_pid=rec.pid)
        bench.http.append(_http_row("a", "new HttpHook(...).run() per lead", name, 1, res))
    for name, c, n_raw, n_lead in plan.pairs:
        rec = bench.receivers[name]
        raw_rows, path_rows, lead_rows = [], [], []
        for run in range(1, plan.repeat + 1):
            _say(f"(b) raw aiohttp, {name} receiver, C={c}, {n_raw:,} leads (run {run})")
            res = bench.worker(
                "raw", url=rec.url, csv_path=leads_csv, n=n_raw, concurrency=c, receiver_pid=rec.pid
            )
            raw_rows.append(_http_row("b", "raw aiohttp, one pooled session", name, c, res))
            if name == "instant":
                _say(f"(b2) leadpost sending path, no ledger, C={c}, {n_raw:,} leads (run {run})")
                res = bench.worker(
                    "sendpath", url=rec.url, csv_path=leads_csv, n=n_raw, concurrency=c, receiver_pid=rec.pid
                )
                path_rows.append(
                    _http_row("b2", "leadpost send_leads alone (no claims, no ledger)", name, c, res)
                )
            _say(f"(c) leadpost dispatch_shard, {name} receiver, C={c}, {n_lead:,} leads (run {run})")
            db = bench.tmp / f"c-{name}-{c}.db"
            profile_to = RESULTS.parent / f"profile-c-{name}-C{c}.raw" if bench.profile and run == 1 else None
            if profile_to is not None:
                profile_to.parent.mkdir(exist_ok=True)
            res = bench.worker(
                "leadpost",
                profile_to=profile_to,
                url=rec.url,
                csv_path=leads_csv,
                n=n_lead,
                concurrency=c,
                receiver_pid=rec.pid,
                db=str(db),
            )
            rep = res["report"]
            res["notes"] = f"{rep['pages']} pages, retrying {rep['retrying']}, dead {rep['dead']}"
            lead_rows.append(_http_row("c", "leadpost dispatch_shard + ledger (SQLite)", name, c, res))
            if profile_to is not None:
                _summarize_profile(profile_to)
            for path in bench.tmp.glob(db.name + "*"):
                path.unlink()
        bench.http += [_best(rows) for rows in (raw_rows, path_rows, lead_rows) if rows]
    bench.http.sort(key=lambda r: r["case"])  # stable: a, b, b2, c in plan order


_FRAME = re.compile(r"^(.+) \((.+):\d+\)$")  # py-spy raw frame: "function (path:line)"


def _summarize_profile(raw: Path) -> None:
    """Share of sampled CPU per function (inclusive, every thread) next to the raw py-spy stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "dispatch_shard" not in stack and "_WorkItem.run" not in stack:
            continue  # setup, and idle pool threads
        total += int(count)
        frames = {f"{m[1]} ({Path(m[2]).name})" for m in map(_FRAME.match, stack.split(";")) if m}
        for frame in frames:
            inclusive[frame] += int(count)
    lines = [f"{raw.name}: {total} samples in dispatch (main loop + worker threads)"]
    lines += [f"{n * 100 / max(1, total):5.1f} %  {name}" for name, n in inclusive.most_common(60)]
    raw.with_suffix(".txt").write_text("\n".join(lines) + "\n")


def run_dag(bench: Bench) -> None:
    """(d) Each trigger DAG through ``airflow dags test`` in a fresh AIRFLOW_HOME, as ``make demo`` does."""
    from leadpost.store.generate import write_leads

    plan = bench.plan
    home = bench.tmp / "airflow_home"
    home.mkdir()
    leads_csv = home / "leads.csv"
    write_leads(leads_csv, plan.dag_leads, seed=7)
    triggers = home / "triggers.yaml"
    entries = [
        (f"bench_{name}", rec.url, plan.dag_parallelism, plan.dag_concurrency)
        for name, rec in bench.receivers.items()
    ]
    triggers.write_text(_triggers_yaml(entries))
    env = {
        **bench.env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "LEADPOST_TRIGGERS": str(triggers),
    }
    _say(f"(d) fresh AIRFLOW_HOME: migrate, db init, import {plan.dag_leads:,} leads, test both actions")
    t0 = time.perf_counter()
    bench.command(env, "airflow", "db", "migrate")
    bench.command(env, "leadpost", "db", "init")
    bench.command(env, "leadpost", "leads", "import", str(leads_csv))
    for trigger_id, *_ in entries:
        bench.command(env, "leadpost", "test", f"{trigger_id}.crm")
    bench.notes.append(
        f"(d) setup before the timed runs (db migrate, leadpost db init, import of {_num(plan.dag_leads)} "
        f"leads, two `leadpost test`): {time.perf_counter() - t0:.0f} s"
    )
    for name, rec in bench.receivers.items():
        dag_id = f"leadpost_bench_{name}"
        _say(f"(d) airflow dags test {dag_id}")
        before, rcpu0, cpu0 = rec.stats(), _process_cpu_s(rec.pid), _children_cpu_s()
        t0 = time.perf_counter()
        bench.command(env, "airflow", "dags", "test", dag_id)
        wall = time.perf_counter() - t0
        after = rec.stats()
        got = after["count"] - before["count"]
        rcpu = _process_cpu_s(rec.pid) - rcpu0
        res = {
            "ok": got,
            "sent": got,
            "wall_s": wall,
            "cpu_s": _children_cpu_s() - cpu0,
            "receiver_cpu_s": rcpu,
        }
        res["notes"] = _shard_notes(home / "airflow.db", dag_id, got) + (
            f"; {after['duplicates'] - before['duplicates']} duplicate Idempotency-Keys"
        )
        client = f"airflow dags test, parallelism {plan.dag_parallelism}"
        bench.http.append(_http_row("d", client, name, plan.dag_concurrency, res))


def _shard_notes(db: Path, dag_id: str, leads: int) -> str:
    """When the mapped dispatch tasks ran (from the metadata DB), and the rate over their span."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            rows = con.execute(
                "SELECT ti.start_date, ti.end_date, dr.start_date FROM task_instance ti "
                "JOIN dag_run dr ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id "
                "WHERE ti.dag_id = ? AND ti.task_id = 'dispatch' ORDER BY ti.start_date",
                (dag_id,),
            ).fetchall()
    except sqlite3.Error as exc:
        return f"shard timing unavailable ({exc})"
    spans = [
        (datetime.fromisoformat(s), datetime.fromisoformat(e), datetime.fromisoformat(r)) for s, e, r in rows
    ]
    if not spans:
        return "no dispatch task found"
    begin, end = min(s for s, _, _ in spans), max(e for _, e, _ in spans)
    run_start = spans[0][2]
    serial = all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
    span_s = (end - begin).total_seconds()
    return (
        f"{len(spans)} dispatch tasks ran {'one after another' if serial else 'overlapping'}, "
        f"{(begin - run_start).total_seconds():.1f}-{(end - run_start).total_seconds():.1f} s into the run "
        f"({_num(leads / span_s)} leads/s over that span)"
    )


@contextlib.contextmanager
def _pg_database() -> Iterator[str]:
    """A throw-away database on the local PostgreSQL, dropped afterwards."""
    import psycopg2

    name = f"leadpost_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(PG_ADMIN_DSN)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_DSN.replace("postgresql://", "postgresql+psycopg2://", 1).rsplit("/", 1)[0]
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def run_store(bench: Bench) -> None:
    """Pending selection per page and peak RSS of dispatch, on SQLite and PostgreSQL, at two sizes."""
    plan = bench.plan
    leads_csv = str(_leads_csv(bench, max(plan.store_sizes)))
    instant = bench.receivers["instant"].url
    for backend in ("sqlite", "postgresql"):
        for n in plan.store_sizes:
            with contextlib.ExitStack() as stack:
                if backend == "sqlite":
                    url = f"sqlite:///{bench.tmp / f'store-{n}.db'}"
                    stack.callback(lambda: [p.unlink() for p in bench.tmp.glob("store-*.db*")])
                else:
                    url = stack.enter_context(_pg_database())
                _say(f"store {backend} {n:,} leads: loading")
                load = bench.worker("load", backend=backend, url=url, csv_path=leads_csv, n=n)
                _say(f"store {backend} {n:,} leads: loaded in {load['load_s']:.0f} s; memory runs")
                http = bench.worker(
                    "rss", url=url, mode="http", receiver=instant, cap=plan.rss_http_leads, budget_s=0
                )
                loop = bench.worker(
                    "rss", url=url, mode="loop", receiver=instant, cap=None, budget_s=plan.loop_budget_s
                )
                _say(f"store {backend} {n:,} leads: selection timings")
                selects = bench.worker("select", url=url)
                bench.memory.append(
                    {"backend": backend, "n": n, "load_s": load["load_s"], "http": http, "loop": loop}
                )
                bench.selects.append({"backend": backend, "n": n, **selects})


# --- report ------------------------------------------------------------------------------------


@dataclass
class Section:
    """One table of the report."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}".replace(",", " ")


def _receiver_label(name: str) -> str:
    return "instant" if name == "instant" else f"+{SLOW_MS} ms"


def _find(
    rows: list[dict[str, Any]], case: str, receiver: str, c: int | None = None
) -> dict[str, Any] | None:
    return next(
        (r for r in rows if r["case"] == case and r["receiver"] == receiver and c in (None, r["C"])), None
    )


def _target(check: str, value: str, target: str, ok: bool | None) -> list[str]:
    return [check, value, target, "-" if ok is None else "PASS" if ok else "MISS"]


def _http_section(bench: Bench) -> Section:
    rows = [
        [
            r["case"], r["client"], _receiver_label(r["receiver"]), str(r["C"]), _num(r["leads"]),
            _num(r["wall_s"], 1), _num(r["rate"]), _num(r["cpu_us"]), _num(r["cpu_pct"]),
            _num(r["receiver_pct"]), r["notes"],
        ]
        for r in bench.http
    ]  # fmt: skip
    return Section(
        "HTTP fan-out: leads per second (one form POST per lead)",
        [
            "",
            "client",
            "receiver",
            "C",
            "leads",
            "wall s",
            "leads/s",
            "client CPU µs/lead",
            "client CPU %",
            "receiver CPU %",
            "notes",
        ],
        rows,
        [
            "leads/s = leads answered 2xx / wall time of the sending alone (loading the store and the "
            "test execution excluded); for (d) the wall time of the whole `airflow dags test` command, "
            "leads counted by the receiver.",
            "client CPU = user+system time of the client process over the measurement, every thread "
            "(dispatch's database work runs in worker threads), per request; client CPU % near 100 = "
            "the client is CPU-bound on its one core. For (d) it is the CPU of the whole `airflow dags "
            "test` process tree (Airflow start-up, parsing and task overhead included). receiver CPU % "
            "near 100 = the receiver's core is saturated and the figure is the receiver's ceiling.",
            f"The same {len(FIELDS)} fields + static token in every body; (c) and (d) select leads with "
            f"filter {FILTERS} (about 10 % of the generated leads are unsubscribed or inactive).",
        ],
    )


def _targets_section(bench: Bench) -> Section:
    rows: list[list[str]] = []
    for name, c in (("instant", 16), ("instant", 64), ("slow", 64)):
        b, cc = _find(bench.http, "b", name, c), _find(bench.http, "c", name, c)
        if b and cc:
            ratio = cc["rate"] / b["rate"]
            check = f"c/b, {_receiver_label(name)}, C={c}"
            rows.append(_target(check, f"{ratio:.2f}", f">= {TARGET_C_OVER_B}", ratio >= TARGET_C_OVER_B))
            by_cpu = b["cpu_us"] / cc["cpu_us"]
            check = f"c/b by client CPU per lead (b µs / c µs: {b['cpu_us']:.0f} / {cc['cpu_us']:.0f})"
            rows.append(_target(check, f"{by_cpu:.2f}", "(information)", None))
            b2 = _find(bench.http, "b2", name, c)
            if b2:  # where the gap is: the sending path itself, or the ledger around it
                check = f"b2/b, sending path alone (b2 µs: {b2['cpu_us']:.0f})"
                rows.append(_target(check, f"{b2['rate'] / b['rate']:.2f}", "(information)", None))
    for name in ("slow", "instant"):
        a, d = _find(bench.http, "a", name), _find(bench.http, "d", name)
        if a and d:
            ratio = d["rate"] / a["rate"]
            slow = name == "slow"
            check = f"d/a, {_receiver_label(name)}, C={d['C']}"
            target = f">= {TARGET_D_OVER_A:g}" if slow else "(no target)"
            rows.append(_target(check, f"{ratio:.1f}", target, ratio >= TARGET_D_OVER_A if slow else None))
    big = max(bench.plan.store_sizes)
    for s in (s for s in bench.selects if s["n"] == big):
        pages = s["positions"].values()
        for what, ms in (
            ("pending_select, worst of start/middle/end", max(p["select_ms"] for p in pages)),
            ("claim_batch, worst of start/middle/end", max(p["claim_ms"] for p in pages)),
            ("first page of a later run (above its scan floor), claimed", s["steady"]["later_ms"]),
            (
                "first page of a walk from id 0 (first run, filter change), claimed",
                s["steady"]["full_walk_ms"],
            ),
        ):
            check = f"{s['backend']} {_num(big)} leads: {what}"
            rows.append(
                _target(check, f"{_num(ms)} ms", f"< {TARGET_SELECT_MS / 1000:g} s", ms < TARGET_SELECT_MS)
            )
    small = min(bench.plan.store_sizes)
    for backend in ("sqlite", "postgresql"):
        by_n = {m["n"]: m for m in bench.memory if m["backend"] == backend}
        if small in by_n and big in by_n:
            for mode, what in (("http", "dispatch_shard"), ("loop", "claim/record walk")):
                ratio = by_n[big][mode]["peak_rss_mb"] / by_n[small][mode]["peak_rss_mb"]
                check = f"{backend} peak RSS, {what}: {_num(big)} / {_num(small)} leads"
                rows.append(
                    _target(check, f"{ratio:.2f}x", f"<= {TARGET_RSS_RATIO}x", ratio <= TARGET_RSS_RATIO)
                )
    return Section("Targets (printed, never asserted)", ["check", "value", "target", "verdict"], rows)


def _select_section(bench: Bench) -> Section:
    rows = []
    for s in bench.selects:
        where = (s["backend"], _num(s["n"]))
        for label, p in s["positions"].items():
            claimed = "/".join(str(x) for x in p["claimed"])
            query = f"fresh ledger, page at the {label}"
            rows.append(
                [*where, query, f"{p['select_ms']:.1f}", str(p["rows"]), f"{p['claim_ms']:.1f}", claimed]
            )
        st = s["steady"]
        query = f"{_num(st['delivered'])} delivered, walk from id 0: first page"
        claim = [f"{st['full_walk_ms']:.1f}", str(st["full_walk_claimed"])]
        rows.append([*where, query, f"{st['select_ms']:.1f}", str(st["rows"]), *claim])
        query = f"later run, scan floor at id {_num(st['later_floor'])}: first page"
        rows.append([*where, query, "-", "-", f"{st['later_ms']:.1f}", str(st["later_claimed"])])
        rows.append([*where, "count_deliveries before any floor (summary task, `leadpost status`)",
                     f"{st['count_ms']:.1f}", f"pending {st['pending']}", "-", "-"])  # fmt: skip
        rows.append([*where, "count_deliveries at the later run (below + above the floor)",
                     f"{st['later_count_ms']:.1f}", f"pending {st['later_pending']}", "-", "-"])  # fmt: skip
    return Section(
        f"Pending selection, one page of {PAGE} (filter {FILTERS})",
        ["backend", "leads", "query", "pending_select ms", "rows", "claim_batch ms", "claimed"],
        rows,
        [
            "pending_select = the page's SELECT executed and fetched (median of 3). claim_batch = "
            "SELECT + INSERT ... ON CONFLICT DO UPDATE ... RETURNING in one transaction, the work of "
            "claiming a page (median of 3 consecutive claims after the same id; 'claimed' per claim). "
            "start / middle / end = after_id 0, max/2, max-2000.",
            "walk from id 0 = every matching lead up to max-500 has a delivered ledger row (INSERT ... "
            "SELECT; PostgreSQL then ANALYZEd, as autovacuum would) and the walk starts from id 0, as a "
            "shard's first run and a run after a filter change do (the daily sweep below a floor reads "
            "the same, after the run's new leads); that walk then claims and records the rest and sets "
            "the shard's scan floor.",
            f"later run = the next scheduled run after {PAGE} new leads arrived and 100 delivered ones "
            "changed: the walk opens (max id, floor, changed-lead count), looks below the floor at changed "
            "leads and reopened rows, then claims the first page above it (ms include all of that).",
        ],
    )


def _memory_section(bench: Bench) -> Section:
    rows = []
    for m in bench.memory:
        for mode in ("http", "loop"):
            r = m[mode]
            if mode == "http":
                what = f"dispatch_shard with HTTP, {_num(bench.plan.rss_http_leads)} leads, C=64"
            else:
                scope = "every page" if r["complete"] else f"time-boxed at {bench.plan.loop_budget_s:g} s"
                what = f"claim -> build requests -> record, no HTTP, {scope}"
            per_page = "-" if r["claim_ms"] is None else f"{r['claim_ms']:.0f} / {r['record_ms']:.0f}"
            rows.append([m["backend"], _num(m["n"]), what, _num(r["processed"]), _num(r["wall_s"], 1),
                         _num(r["base_rss_mb"], 1), _num(r["peak_rss_mb"], 1), per_page])  # fmt: skip
    loads = ", ".join(f"{m['backend']} {_num(m['n'])} in {m['load_s']:.0f} s" for m in bench.memory)
    return Section(
        "Peak memory of a dispatch process",
        [
            "backend",
            "leads in store",
            "what ran",
            "leads processed",
            "wall s",
            "RSS before MiB",
            "peak RSS MiB",
            "claim / record ms per page",
        ],
        rows,
        [
            "Each row is a fresh process. RSS before = after imports, engine and test execution; peak = "
            "ru_maxrss of the process at the end.",
            "A full 1 M-lead send with HTTP is not run (several minutes per backend here): the HTTP rows "
            "send the same number of leads from both store sizes; the walk rows page through the store "
            "as dispatch does, with no HTTP, every lead recorded delivered.",
            f"Store loading (generated leads, executemany / COPY): {loads}.",
        ],
    )


def build_sections(bench: Bench) -> list[Section]:
    sections = []
    if bench.http:
        sections.append(_http_section(bench))
    sections.append(_targets_section(bench))
    if bench.selects:
        sections.append(_select_section(bench))
    if bench.memory:
        sections.append(_memory_section(bench))
    return sections


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _sources() -> dict[str, str]:
    """Digest of every leadpost source file, to tell whether the code moved during the run."""
    root = REPO / "plugins" / "leadpost"
    return {str(p.relative_to(REPO)): hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*.py")}


def _machine(bench: Bench, command: str, load_before: float) -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    pg = "?"
    with contextlib.suppress(ImportError, OSError, RuntimeError, LookupError, ValueError):
        import psycopg2

        with contextlib.closing(psycopg2.connect(PG_ADMIN_DSN)) as conn, conn.cursor() as cur:
            cur.execute("SHOW server_version")
            pg = cur.fetchone()[0]
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "plugins"], cwd=REPO, capture_output=True, text=True
    ).stdout.split("\n")
    changed = sorted(line[3:] for line in dirty if line.strip())
    tree = f"git {git.stdout.strip() or '?'}" + (f" + uncommitted {', '.join(changed)}" if changed else "")
    now = _sources()
    moved = sorted(p for p in set(bench.sources) | set(now) if bench.sources.get(p) != now.get(p))
    tree += f"; changed during the run: {', '.join(moved)}" if moved else "; unchanged during the run"
    pinning = (
        f"clients pinned to CPU {sorted(bench.client_cores)}, receivers to CPU "
        f"{sorted(bench.receiver_cores or [])} (os.sched_setaffinity); PostgreSQL's processes are not pinned"
        if bench.client_cores
        else "no pinning (fewer than 2 usable cores)"
    )
    return [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- command: {command}",
        f"- machine: nproc {os.cpu_count()} ({cpu}), Linux {platform.release()}; load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other work on the machine shares "
        "the cores)",
        f"- {pinning}",
        f"- Python {platform.python_version()}, apache-airflow {_version('apache-airflow')}, "
        f"apache-airflow-providers-http {_version('apache-airflow-providers-http')}, "
        f"aiohttp {_version('aiohttp')}, "
        f"requests {_version('requests')}, SQLAlchemy {_version('sqlalchemy')}, psycopg2 "
        f"{_version('psycopg2-binary')}, SQLite {sqlite3.sqlite_version}, PostgreSQL {pg}, leadpost "
        f"{_version('leadpost')} ({tree})",
        f"- receivers: `python -m tests.receiver --count-only` (aiohttp server, one process each), one "
        f"answering at once, one with `--delay-ms {SLOW_MS}`",
    ]  # fmt: skip


def _markdown(sections: list[Section], header: list[str], notes: list[str]) -> str:
    out = ["# leadpost bench", "", *header, ""]
    for s in sections:
        out += [f"## {s.title}", "", "| " + " | ".join(s.headers) + " |", "|" + "---|" * len(s.headers)]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in s.rows]
        out += ["", *(f"- {n}" for n in s.notes), *([""] if s.notes else [])]
    if notes:
        out += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(out)


def _print(sections: list[Section], header: list[str], notes: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    console.print("[bold]leadpost bench[/]")
    for line in header:
        console.print(line, markup=False)
    for s in sections:
        table = Table(title=s.title, title_justify="left", title_style="bold")
        for h in s.headers:
            table.add_column(h, overflow="fold")
        for row in s.rows:
            table.add_row(
                *(f"[green]{c}[/]" if c == "PASS" else f"[red]{c}[/]" if c == "MISS" else c for c in row)
            )
        console.print(table)
        for n in s.notes:
            console.print(f"  - {n}", markup=False)
    for n in notes:
        console.print(f"- {n}", markup=False)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="scripts/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check in under 2 minutes")
    parser.add_argument("--only", default="http,dag,store", help="comma-separated parts: http, dag, store")
    parser.add_argument("--profile", action="store_true", help="sample (c) with py-spy into bench_results/")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown results file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("worker_args", nargs="?", help=argparse.SUPPRESS)
    opts = parser.parse_args(args)
    if opts.worker:
        result = WORKERS[opts.worker](**json.loads(opts.worker_args))
        print(MARK + json.dumps(result, default=str), flush=True)
        return 0

    parts = {p.strip() for p in opts.only.split(",") if p.strip()}
    if parts - {"http", "dag", "store"}:
        parser.error(f"unknown part(s) {', '.join(sorted(parts - {'http', 'dag', 'store'}))}")
    if opts.profile and not (BIN / "py-spy").exists():
        parser.error("--profile needs py-spy in the venv: .venv/bin/pip install py-spy")
    usable = sorted(os.sched_getaffinity(0))
    two = len(usable) >= 2
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="leadpost-bench-"))
    plan = QUICK if opts.quick else FULL
    bench = Bench(plan, tmp, {usable[0]} if two else None, {usable[1]} if two else None, opts.profile)
    bench.sources = _sources()
    bench.env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "AIRFLOW_HOME": str(tmp / "home"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LEADPOST__ALLOWED_NETWORKS": "127.0.0.1/32",  # the receivers live on loopback
        "LEADPOST_TRIGGERS": str(tmp / "triggers.yaml"),
    }
    try:
        bench.receivers = {"instant": Receiver(bench, 0), "slow": Receiver(bench, SLOW_MS)}
        if "http" in parts:
            run_http(bench)
        if "dag" in parts:
            run_dag(bench)
        if "store" in parts:
            run_store(bench)
    finally:
        for rec in bench.receivers.values():
            rec.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if opts.quick:
        bench.notes.append(
            "--quick: sizes for a smoke check only; the ratios and targets need the full sizes "
            "(Airflow's fixed start-up dominates (d) and page-sized runs dominate (c))"
        )
    bench.notes.append(f"the whole bench took {time.perf_counter() - started:.0f} s")
    command = " ".join([os.path.relpath(sys.executable, REPO), "scripts/bench.py", *args])
    header = _machine(bench, f"`{command}`" + (" (`make bench`)" if not args else ""), load_before)
    sections = build_sections(bench)
    _print(sections, header, bench.notes)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(_markdown(sections, header, bench.notes), encoding="utf-8")
    print(f"\nwritten to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
