"""Dispatch one shard of an action: claim pages of leads, send them, record every outcome.

The database stays off the hot path: the next page is claimed while the current one is on the
wire, and outcomes are recorded in small groups as they arrive, each in a worker thread.
Sending is ``concurrency`` coroutines pulling from one feed over one pooled aiohttp client (one
session per dispatch task); they flow from one page into the next without waiting for a page's
slowest request.

Transient failures are retried inside the run with exponential backoff and jitter; a
``Retry-After`` pauses the whole shard until the time it names (it speaks for the endpoint, not
for one lead). What still fails is recorded as ``retrying`` with a ``next_attempt_at`` for later
runs. A circuit breaker stops the shard when the endpoint is clearly down, refuses the
credentials (401/403) or is gone (410): unsent leads are released, never lost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from leadpost.exceptions import UnsafeTargetError
from leadpost.ledger import (
    Selection,
    Shard,
    ShardWalk,
    claim_batch,
    read_status,
    record_outcomes,
    release_claims,
    set_action_status,
)
from leadpost.states import ActionStatus, Outcome, OutcomeKind

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from leadpost.hook import LeadPostHook, PreparedLeadRequest

__all__ = [
    "Breaker",
    "Feed",
    "RateLimiter",
    "Recorder",
    "Result",
    "ShardReport",
    "dispatch_shard",
    "send_leads",
]

log = logging.getLogger(__name__)

IN_RUN_TRIES = 4  # requests per lead within one run before it waits for a later run
RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0
RETRY_AFTER_CAP_S = 300.0  # a longer Retry-After ends the run for that lead; later runs honour it
DEFAULT_RUN_BUDGET_S = 600.0  # in-run retries stop after this; the ledger carries the rest


@dataclass
class ShardReport:
    """Counts of one shard's run (what the dispatch task returns through XCom)."""

    action_key: str
    shard: int = 0
    shards: int = 1
    claimed: int = 0
    requests: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0
    released: int = 0
    pages: int = 0
    stopped: str | None = None
    elapsed_s: float = 0.0

    def add(self, results: list[tuple[int, Outcome, int]]) -> None:
        for _lead_id, outcome, tries in results:
            self.requests += tries
            if outcome.kind is OutcomeKind.DELIVERED:
                self.delivered += 1
            elif outcome.kind is OutcomeKind.REJECTED:
                self.dead += 1
            elif outcome.kind is OutcomeKind.TRANSIENT:
                # the ledger adds earlier attempts; this is the in-run view
                self.retrying += 1
            else:
                self.released += 1

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        return data


@dataclass
class Breaker:
    """Stops sending to an endpoint that is down, refuses our credentials, or is gone.

    :param consecutive: this many transient failures in a row trip it.
    :param window: size of the sliding window for the failure ratio.
    :param ratio: failure ratio over a full window that trips it.
    """

    consecutive: int = 25
    window: int = 100
    ratio: float = 0.9
    tripped: str | None = None
    status: ActionStatus = ActionStatus.FAILING
    _streak: int = 0
    _failures: int = 0  # in the window, kept as a running count (observed once per request)
    _recent: deque[bool] = field(default_factory=deque)

    def observe(self, outcome: Outcome) -> None:
        if self.tripped:
            return
        if outcome.kind is OutcomeKind.AUTH_FAILED:
            self.trip(
                f"the endpoint refused the credentials (HTTP {outcome.status}); check the auth connection"
            )
        elif outcome.kind is OutcomeKind.GONE:
            self.status = ActionStatus.DISABLED
            self.trip("the endpoint answered 410 Gone: it asked us to stop sending")
        failed = outcome.kind is OutcomeKind.TRANSIENT
        self._streak = self._streak + 1 if failed else 0
        self._recent.append(failed)
        self._failures += failed
        if len(self._recent) > self.window:
            self._failures -= self._recent.popleft()
        if self._streak >= self.consecutive:
            self.trip(f"{self._streak} consecutive failures, last: {outcome.error or outcome.status}")
        elif len(self._recent) == self.window and self._failures >= self.ratio * self.window:
            self.trip(f"{self._failures} of the last {self.window} requests failed, last: {outcome.error}")

    def trip(self, reason: str) -> None:
        """Stop sending (the first reason wins)."""
        if not self.tripped:
            self.tripped = reason


class RateLimiter:
    """Paces requests (token bucket) and holds them while the endpoint asked us to wait."""

    def __init__(self, rate_per_s: float | None) -> None:
        self._interval = 1.0 / rate_per_s if rate_per_s else 0.0
        self._next = time.monotonic()
        self._paused_until = 0.0

    def held_past(self, deadline: float) -> bool:
        """Whether the endpoint asked us to wait beyond ``deadline`` (then the run should end)."""
        return self._paused_until > deadline

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def wait(self) -> None:
        if not self._interval and self._paused_until <= 0:
            return  # no rate limit, never paused: the common case costs one comparison
        while True:
            now = time.monotonic()
            hold = self._paused_until - now
            if self._interval:
                hold = max(hold, self._next - now)
            if hold <= 0:
                break
            await asyncio.sleep(hold)
        if self._interval:
            self._next = max(self._next, time.monotonic()) + self._interval


def _backoff(tries: int) -> float:
    return min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (tries - 1)) * (0.5 + random.random() / 2)


Result = tuple[int, Outcome, int]  # lead id, final outcome, requests made for it in this run


class Recorder:
    """Writes outcomes to the ledger while leads are still being sent.

    Outcomes are written in groups (one transaction per claim token, in a worker thread): as
    soon as ``flush_at`` are waiting, or at once when a sender finds every slot taken. Senders
    wait while ``ceiling`` requests are sent but not yet recorded. That ceiling is what a crash
    can resend — dispatch sets it to ``concurrency``: the requests in flight, never a page.
    """

    def __init__(
        self,
        write: Callable[[str, list[Result]], None],
        *,
        flush_at: int,
        ceiling: int,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self._write = write
        self._executor = executor
        self._flush_at = max(1, min(flush_at, ceiling))
        self._slots = asyncio.Semaphore(max(1, ceiling))
        self._buffer: list[tuple[str, Result]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def reserve(self) -> None:
        """Wait for room before sending one more request."""
        if self._slots.locked():
            # Every slot is taken: record what is buffered now rather than idle the senders.
            self._start_flush(force=True)
        await self._slots.acquire()

    def cancel(self) -> None:
        """Give back a reservation that was not used."""
        self._slots.release()

    def add(self, token: str, result: Result) -> None:
        self._buffer.append((token, result))
        if len(self._buffer) >= self._flush_at:
            self._start_flush(force=False)

    def _start_flush(self, *, force: bool) -> None:
        if self._buffer and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.ensure_future(self._flush(force=force))

    async def _flush(self, *, force: bool) -> None:
        while self._buffer and (force or len(self._buffer) >= self._flush_at):
            batch, self._buffer = self._buffer, []
            await asyncio.get_running_loop().run_in_executor(self._executor, self._write_batch, batch)
            for _ in batch:
                self._slots.release()

    def _write_batch(self, batch: list[tuple[str, Result]]) -> None:
        by_token: dict[str, list[Result]] = {}
        for token, result in batch:
            by_token.setdefault(token, []).append(result)
        for token, results in by_token.items():
            self._write(token, results)

    async def drain(self) -> None:
        """Record everything still buffered."""
        if self._flushing is not None:
            await self._flushing
        await self._flush(force=True)


class LedgerThread:
    """One thread holding one connection, for the many small outcome writes of a dispatch.

    Checking a pooled connection out and back in costs more than writing a few dozen outcomes.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="leadpost-ledger")

    def connection(self) -> Connection:
        """The held connection (call it from the executor's thread)."""
        if self._conn is None:
            self._conn = self._engine.connect()
        return self._conn

    def close(self) -> None:
        def close_conn() -> None:
            if self._conn is not None:
                self._conn.close()

        self.executor.submit(close_conn).result()
        self.executor.shutdown()


class Feed:
    """Claimed leads waiting to be sent, refilled a page at a time.

    The next page is claimed (in a worker thread) while the current one is on the wire, and
    senders move on to it as soon as the current page has no lead left to start — no page ends
    with idle senders waiting for its slowest request.

    :param claim: ``claim(after_id) -> (token, page)``; an empty page ends the feed.
    """

    def __init__(
        self, claim: Callable[[int], tuple[str, list[dict[str, Any]]]], *, report: ShardReport
    ) -> None:
        self._claim = claim
        self._report = report
        self._items: deque[tuple[str, dict[str, Any]]] = deque()
        self._lock = asyncio.Lock()
        self._exhausted = False
        self._next: asyncio.Future[tuple[str, list[dict[str, Any]]]] | None = None

    @classmethod
    def of(cls, leads: list[dict[str, Any]], *, report: ShardReport) -> Feed:
        """A feed over leads already in hand (no claims)."""
        feed = cls(lambda _after: ("", []), report=report)
        feed._items.extend(("", lead) for lead in leads)
        return feed

    async def next(self) -> tuple[str, dict[str, Any]] | None:
        """The next ``(claim token, lead)`` to send, or ``None`` when there is none left."""
        while not self._items:
            if self._exhausted:
                return None
            async with self._lock:
                if not self._items and not self._exhausted:
                    await self._refill()
        return self._items.popleft()

    async def _refill(self) -> None:
        if self._next is None:
            self._next = asyncio.ensure_future(asyncio.to_thread(self._claim, 0))
        token, page = await self._next
        self._next = None
        if not page:
            self._exhausted = True
            return
        self._items.extend((token, lead) for lead in page)
        self._report.claimed += len(page)
        self._report.pages += 1
        self._next = asyncio.ensure_future(asyncio.to_thread(self._claim, page[-1]["id"]))

    def push_back(self, token: str, lead: dict[str, Any]) -> None:
        self._items.appendleft((token, lead))

    async def close(self) -> dict[str, list[int]]:
        """Stop refilling; return the claimed but unsent lead ids by claim token."""
        self._exhausted = True
        unsent: dict[str, list[int]] = {}
        for token, lead in self._items:
            unsent.setdefault(token, []).append(lead["id"])
        self._items.clear()
        if self._next is not None:  # a prefetched page that will not be sent
            token, page = await self._next
            self._next = None
            if page:
                self._report.claimed += len(page)
                unsent.setdefault(token, []).extend(lead["id"] for lead in page)
        return unsent


async def send_leads(
    client: Any,
    hook: LeadPostHook,
    feed: Feed,
    *,
    concurrency: int,
    limiter: RateLimiter,
    breaker: Breaker,
    deadline: float,
    recorder: Recorder | None = None,
) -> list[Result]:
    """Send what ``feed`` yields with ``concurrency`` requests in flight.

    :param recorder: when given, each outcome is handed to it as soon as it is final.
    :return: ``(lead_id, outcome, tries)`` for every lead sent; the feed keeps the unsent ones.
    """
    results: list[Result] = []

    def stopping() -> bool:
        return bool(breaker.tripped) or limiter.held_past(deadline)

    async def worker() -> None:
        while not stopping():
            if recorder is not None:
                await recorder.reserve()
            item = None if stopping() else await feed.next()
            if item is None:
                if recorder is not None:
                    recorder.cancel()
                return
            token, lead = item
            try:
                result = await _send_one(
                    client, hook, lead, limiter=limiter, breaker=breaker, deadline=deadline
                )
            except UnsafeTargetError as exc:  # the target stopped being allowed: a config problem
                breaker.trip(str(exc))
                feed.push_back(token, lead)
                if recorder is not None:
                    recorder.cancel()
                return
            results.append(result)
            if recorder is not None:
                recorder.add(token, result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def _send_one(
    client: Any,
    hook: LeadPostHook,
    lead: dict[str, Any],
    *,
    limiter: RateLimiter,
    breaker: Breaker,
    deadline: float,
) -> Result:
    """One lead, with its in-run retries."""
    request: PreparedLeadRequest = hook.build_request(lead)
    tries = 0
    while True:
        await limiter.wait()
        outcome = await client.send(request)
        tries += 1
        breaker.observe(outcome)
        if outcome.retry_after_s:
            limiter.pause(min(outcome.retry_after_s, RETRY_AFTER_CAP_S))
        if outcome.kind is not OutcomeKind.TRANSIENT or tries >= IN_RUN_TRIES or breaker.tripped:
            break
        delay = max(_backoff(tries), min(outcome.retry_after_s or 0, RETRY_AFTER_CAP_S))
        if time.monotonic() + delay > deadline:
            break
        await asyncio.sleep(delay)
        if breaker.tripped:  # tripped while this lead was backing off
            break
    return lead["id"], outcome, tries


def dispatch_shard(
    engine: Engine,
    sel: Selection,
    shard: Shard,
    *,
    hook: LeadPostHook | None = None,
    max_leads: int | None = None,
    run_budget_s: float = DEFAULT_RUN_BUDGET_S,
    lead_ids: list[int] | None = None,
    require_active: bool = True,
) -> ShardReport:
    """Send every pending lead of ``shard`` (or up to ``max_leads``) and record each outcome.

    Safe to run while other shards, runs or workers dispatch the same action: claims decide.

    :param lead_ids: only these leads (default: every lead the trigger's filters select).
    :param require_active: stop as soon as the action is not ``active`` (checked before each page).
    """
    if hook is None:
        from leadpost.hook import LeadPostHook

        hook = LeadPostHook(sel.action, action_key=sel.action_key)
    # Setup objects (Airflow's modules included) live for the whole run: keep the collector from
    # rescanning them per page. No gc.collect() first: in a task process it costs 40-150 ms.
    gc.freeze()
    try:
        return asyncio.run(
            _dispatch(
                engine,
                sel,
                shard,
                hook=hook,
                max_leads=max_leads,
                budget=run_budget_s,
                lead_ids=lead_ids,
                require_active=require_active,
            )
        )
    finally:
        gc.unfreeze()


async def _dispatch(
    engine: Engine,
    sel: Selection,
    shard: Shard,
    *,
    hook: LeadPostHook,
    max_leads: int | None,
    budget: float,
    lead_ids: list[int] | None,
    require_active: bool,
) -> ShardReport:
    action = sel.action
    report = ShardReport(sel.action_key, shard.index, shard.count)
    started = time.monotonic()
    deadline = started + budget
    limiter = RateLimiter(action.rate_limit_per_s / shard.count if action.rate_limit_per_s else None)
    breaker = Breaker(consecutive=max(25, 2 * action.concurrency))
    remaining = max_leads if max_leads is not None else math.inf
    # Explicit lead ids need no walk; otherwise start above what earlier runs already went through.
    walk = None if lead_ids is not None else await asyncio.to_thread(ShardWalk, engine, sel, shard)

    def claim(after_id: int) -> tuple[str, list[dict[str, Any]]]:
        nonlocal remaining
        if require_active and read_status(engine, sel.action_key) is not ActionStatus.ACTIVE:
            return "", []  # another shard tripped the breaker, or someone re-gated the action
        limit = int(min(action.batch_size, remaining))
        if limit <= 0:
            return "", []
        if walk is not None:
            token, page = walk.claim(after_id, limit=limit)
        else:
            token, page = claim_batch(
                engine, sel, shard=shard, after_id=after_id, limit=limit, lead_ids=lead_ids
            )
        remaining -= len(page)
        log.info(
            "%s shard %d/%d: claimed %d lead(s) after id %d",
            sel.action_key,
            shard.index + 1,
            shard.count,
            len(page),
            after_id,
        )
        return token, page

    ledger = LedgerThread(engine)

    def write(token: str, results: list[Result]) -> None:
        record_outcomes(
            ledger.connection(),
            action_key=sel.action_key,
            token=token,
            results=results,
            max_attempts=action.max_attempts,
        )

    def release(unsent: dict[str, list[int]]) -> None:
        for token, ids in unsent.items():
            release_claims(engine, action_key=sel.action_key, token=token, lead_ids=ids)

    feed = Feed(claim, report=report)
    recorder = Recorder(
        write,
        flush_at=max(1, action.concurrency // 2),
        ceiling=action.concurrency,
        executor=ledger.executor,
    )
    results: list[Result] = []
    try:
        async with hook.async_client(action.concurrency) as client:
            results = await send_leads(
                client,
                hook,
                feed,
                concurrency=action.concurrency,
                limiter=limiter,
                breaker=breaker,
                deadline=deadline,
                recorder=recorder,
            )
    except UnsafeTargetError as exc:  # the target stopped being allowed (e.g. allowed_networks narrowed)
        breaker.trip(str(exc))
    finally:
        try:
            await recorder.drain()
        finally:
            ledger.close()
        unsent = await feed.close()
        await asyncio.to_thread(release, unsent)
        report.released += sum(len(ids) for ids in unsent.values())
    if walk is not None:
        await asyncio.to_thread(walk.finish)
    report.add(results)
    if limiter.held_past(deadline) and not breaker.tripped:
        log.info("%s: the endpoint asked to wait past this run's budget; the rest waits", sel.action_key)
    if breaker.tripped:
        report.stopped = breaker.tripped
        set_action_status(engine, sel.action_key, breaker.status, reason=breaker.tripped)
    report.elapsed_s = time.monotonic() - started
    return report
