"""A real HTTP receiver for tests, the demo and the benchmarks.

An :mod:`aiohttp` low-level server on its own event loop (a daemon thread when used in-process,
the main thread when run as ``python -m tests.receiver``). It records every request (method,
path, decoded query, headers, raw body, arrival time), plays scripted replies and injects
faults by mode, and counts requests per ``Idempotency-Key`` so duplicates are visible.

In-process::

    server = start_receiver()
    server.script(Reply(status=503, headers={"Retry-After": "1"}), Reply(status=200))
    ...
    server.wait_for(2)

As a process (the demo and the distributed test drive it over HTTP)::

    python -m tests.receiver --port 0 --delay-ms 0 --port-file /tmp/port [--no-record-bodies | --count-only]

Control endpoints on the same server (never recorded):

* ``GET /__receiver/stats`` -> ``{count, unique_idempotency_keys, duplicates, by_status, last}``
* ``GET /__receiver/requests`` -> every recorded request (``Authorization`` redacted)
* ``POST /__receiver/reset``
* ``POST /__receiver/mode`` JSON ``{"mode": "503", "retry_after": 2, ...}`` (see :meth:`Receiver.set_mode`)
* ``POST /__receiver/script`` JSON ``[{"status": 500}, {"reset": true}, ...]``

Modes: ``ok``, ``500``, ``503`` (``Retry-After``), ``429`` (``Retry-After``), ``reset``, ``hang``,
``401``, ``404``, ``410`` and ``random`` (a seeded mix, deterministic per seed and arrival order).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "CONTROL_PREFIX",
    "MODES",
    "Receiver",
    "Recorded",
    "Reply",
    "main",
    "start_receiver",
]

CONTROL_PREFIX = "/__receiver/"
MODES = ("ok", "500", "503", "429", "reset", "hang", "401", "404", "410", "random")
RECORD_MODES = ("full", "no-bodies", "count")
# Default weights of the "random" mode: mostly success, every failure kind represented.
DEFAULT_RANDOM_WEIGHTS: dict[str, float] = {
    "200": 0.70,
    "500": 0.08,
    "503": 0.08,
    "429": 0.06,
    "reset": 0.04,
    "404": 0.04,
}
_LAST_N = 20
_BODY_PREVIEW = 300
_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 410: "Gone", 429: "Too Many Requests"}
_EMPTY_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    :param status: HTTP status to answer with.
    :param body: response body.
    :param headers: extra response headers (e.g. ``{"Retry-After": "2"}`` or ``{"Location": ...}``).
    :param delay_s: wait this long before answering (or before resetting).
    :param reset: abort the connection (TCP RST) without answering.
    :param hang: never answer; wait until the client gives up and closes the connection.
    """

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    reset: bool = False
    hang: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reply:
        body = data.get("body", "ok")
        return cls(
            status=int(data.get("status", 200)),
            body=body.encode() if isinstance(body, str) else bytes(body),
            headers={str(k): str(v) for k, v in (data.get("headers") or {}).items()},
            delay_s=float(data.get("delay_s", 0.0)),
            reset=bool(data.get("reset", False)),
            hang=bool(data.get("hang", False)),
        )


@dataclass
class Recorded:
    """One request as the receiver saw it.

    :param method: HTTP method.
    :param path: decoded path, without the query string.
    :param query: decoded query parameters, in order (``+`` and ``%XX`` decoded as UTF-8).
    :param headers: case-insensitive, read-only header mapping.
    :param body: the raw body bytes (empty when bodies are not recorded).
    :param at: arrival time, :func:`time.monotonic`.
    :param status: the status answered, ``None`` for a reset or a hang.
    """

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: Mapping[str, str]
    body: bytes
    at: float
    status: int | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def query_dict(self) -> dict[str, str]:
        return dict(self.query)

    def form(self) -> dict[str, str]:
        """The body decoded as ``application/x-www-form-urlencoded`` (UTF-8)."""
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))

    def json(self) -> Any:
        return json.loads(self.body)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly view with ``Authorization`` redacted and the body truncated."""
        return {
            "method": self.method,
            "path": self.path,
            "query": [list(pair) for pair in self.query],
            "headers": {k: ("***" if k.lower() == "authorization" else v) for k, v in self.headers.items()},
            "body": self.body[:_BODY_PREVIEW].decode("utf-8", "replace"),
            "body_bytes": len(self.body),
            "status": self.status,
        }


class Receiver:
    """The running server plus its recorded requests. Create it with :func:`start_receiver`.

    :param host: address to bind.
    :param port: port to bind, ``0`` for a free one.
    :param delay_s: default delay added before every answer.
    :param record: ``full`` (keep every request), ``no-bodies`` (keep requests, drop bodies) or
        ``count`` (keep only counters and the last 20 requests: flat memory for benchmarks).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, delay_s: float = 0.0, record: str = "full"):
        if record not in RECORD_MODES:
            raise ValueError(f"record must be one of {', '.join(RECORD_MODES)}, not {record!r}")
        self.host = host
        self.port = port
        self.url = ""
        self._record = record
        self._default_delay = delay_s
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: web.Server | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._stopped = threading.Event()
        self._clear()

    # --- state -----------------------------------------------------------------------------

    def _clear(self) -> None:
        self._records: list[Recorded] = []
        self._last: collections.deque[Recorded] = collections.deque(maxlen=_LAST_N)
        self._count = 0
        # hash() of each key: 8 bytes of entropy is plenty to tell keys apart and keeps memory small.
        self._keys: set[int] = set()
        self._duplicates = 0
        self._by_status: collections.Counter[str] = collections.Counter()
        self._script: collections.deque[Reply] = collections.deque()
        self._mode = "ok"
        self._mode_kw: dict[str, Any] = {}
        self._rng = random.Random(0)
        self._random_table: tuple[list[str], list[float]] = ([], [])
        self._delay = self._default_delay

    def reset(self) -> None:
        """Forget every record and counter; scripts cleared, mode back to ``ok``, default delay."""
        with self._lock:
            self._clear()

    def script(self, *replies: Reply) -> None:
        """The next requests get these replies, in order; then the mode's default again."""
        with self._lock:
            self._script.extend(replies)

    def set_mode(self, mode: str, *, seed: int = 0, **kw: Any) -> None:
        """Switch the default reply.

        :param mode: one of :data:`MODES`.
        :param seed: seed of the ``random`` mode; the same seed and arrival order give the same replies.
        :param kw: ``retry_after`` (seconds, for 503/429/random), ``delay_s`` (added before every
            answer), ``weights`` (``random`` mode: ``{"200": .7, "500": .1, "503": .1, "429": .05,
            "reset": .03, "404": .02}``), ``body`` (text of the answers).
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        unknown = set(kw) - {"retry_after", "delay_s", "weights", "body"}
        if unknown:
            raise ValueError(f"unknown mode option(s): {', '.join(sorted(unknown))}")
        weights = {str(k): float(v) for k, v in (kw.get("weights") or DEFAULT_RANDOM_WEIGHTS).items()}
        bad = [k for k in weights if k != "reset" and not k.isdigit()]
        if bad or not any(weights.values()):
            raise ValueError(
                f"random weights must map statuses or 'reset' to positive numbers, got {weights}"
            )
        with self._lock:
            self._mode = mode
            self._mode_kw = dict(kw)
            self._rng = random.Random(seed)
            self._random_table = (list(weights), list(weights.values()))
            if "delay_s" in kw:
                self._delay = float(kw["delay_s"])

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def requests(self) -> list[Recorded]:
        """A snapshot of the recorded requests, oldest first."""
        with self._lock:
            return list(self._records)

    @property
    def count(self) -> int:
        """Requests received (also counted in ``count`` record mode)."""
        return self._count

    def by_idempotency_key(self) -> dict[str, list[Recorded]]:
        """Recorded requests grouped by their ``Idempotency-Key`` header (requests without one left out)."""
        grouped: dict[str, list[Recorded]] = {}
        for rec in self.requests:
            key = rec.headers.get("Idempotency-Key")
            if key is not None:
                grouped.setdefault(key, []).append(rec)
        return grouped

    def stats(self) -> dict[str, Any]:
        """Counters as served by ``GET /__receiver/stats``."""
        with self._lock:
            return {
                "count": self._count,
                "unique_idempotency_keys": len(self._keys),
                "duplicates": self._duplicates,
                "by_status": dict(self._by_status),
                "mode": self._mode,
                "last": [rec.summary() for rec in self._last],
            }

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Recorded]:
        """Block until at least ``n`` requests arrived; return the recorded ones.

        :raises TimeoutError: when fewer arrived within ``timeout`` seconds (the message says how many).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._count < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"receiver got {self._count} of {n} expected requests within {timeout:g}s"
                    )
                self._cond.wait(left)
            return list(self._records)

    # --- request handling (event loop thread) ------------------------------------------------

    def _choose(self) -> Reply:
        # Called under the lock: the script and the seeded RNG follow arrival order exactly.
        if self._script:
            reply = self._script.popleft()
            if self._delay and not reply.delay_s:
                reply = Reply(reply.status, reply.body, reply.headers, self._delay, reply.reset, reply.hang)
            return reply
        mode = self._mode
        if mode == "random":
            names, weights = self._random_table
            mode = self._rng.choices(names, weights)[0]
            if mode == "200":
                mode = "ok"
        kw = self._mode_kw
        body = str(kw.get("body", "ok")).encode()
        delay = self._delay
        if mode == "ok":
            return Reply(200, body, {}, delay) if delay else _OK if body == b"ok" else Reply(200, body)
        if mode == "reset":
            return Reply(delay_s=delay, reset=True)
        if mode == "hang":
            return Reply(hang=True)
        status = int(mode)
        headers = {"Retry-After": str(kw.get("retry_after", 1))} if status in (429, 503) else {}
        return Reply(status, body, headers, delay)

    def _note(self, request: BaseRequest, reply: Reply, body: bytes) -> None:
        headers = request.headers
        status = None if (reply.reset or reply.hang) else reply.status
        rec = Recorded(
            method=request.method,
            path=request.path,
            query=parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True),
            headers=headers,
            body=body if self._record == "full" else b"",
            at=time.monotonic(),
            status=status,
        )
        if self._record == "count":
            # Keep a short preview so /__receiver/stats still shows what came in.
            rec.body = body[:_BODY_PREVIEW]
        key = headers.get("Idempotency-Key")
        with self._cond:
            self._count += 1
            if self._record != "count":
                self._records.append(rec)
            self._last.append(rec)
            if key is not None:
                hashed = hash(key)
                if hashed in self._keys:
                    self._duplicates += 1
                else:
                    self._keys.add(hashed)
            self._by_status["reset" if reply.reset else "hang" if reply.hang else str(status)] += 1
            self._cond.notify_all()

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return await self._control(request)
        body = await request.read()
        with self._lock:
            reply = self._choose()
        self._note(request, reply, body)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.hang:
            await _wait_until_closed(request)
            return web.Response(status=599)  # never reaches the client
        if reply.reset:
            _abort(request)
            return web.Response(status=599)  # the transport is gone; aiohttp drops this quietly
        return web.Response(
            status=reply.status,
            body=reply.body,
            headers=reply.headers,
            reason=_REASONS.get(reply.status),
            content_type=None if "Content-Type" in reply.headers else "text/plain",
        )

    async def _control(self, request: BaseRequest) -> web.StreamResponse:
        verb = request.path.removeprefix(CONTROL_PREFIX)
        try:
            if request.method == "GET" and verb == "stats":
                return web.json_response(self.stats())
            if request.method == "GET" and verb == "requests":
                return web.json_response([rec.summary() for rec in self.requests])
            if request.method == "POST" and verb == "reset":
                self.reset()
                return web.json_response({"ok": True})
            if request.method == "POST" and verb == "mode":
                data = await request.json()
                mode = data.pop("mode", "ok")
                seed = int(data.pop("seed", 0))
                self.set_mode(mode, seed=seed, **data)
                return web.json_response({"ok": True, "mode": mode})
            if request.method == "POST" and verb == "script":
                data = await request.json()
                self.script(*(Reply.from_json(item) for item in data))
                return web.json_response({"ok": True, "scripted": len(data)})
        except (ValueError, TypeError, AttributeError) as exc:  # bad control input: tell the caller
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response(
            {"ok": False, "error": f"no control endpoint {request.method} {verb}"}, status=404
        )

    # --- lifecycle -----------------------------------------------------------------------------

    async def _serve(self) -> None:
        self._server = web.Server(self._handle, access_log=None, keepalive_timeout=75)
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._server, self.host, self.port, reuse_address=True, backlog=1024
        )
        self.port = self._listener.sockets[0].getsockname()[1]
        bracket = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{bracket}:{self.port}"

    async def _shutdown(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            self._server.pre_shutdown()
            await self._server.shutdown(1.0)
        if self._listener is not None:
            await self._listener.wait_closed()

    def start(self) -> Receiver:
        """Start serving on a daemon thread; return once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except OSError as exc:  # port taken, bad host: report to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()
                self._stopped.set()

        self._thread = threading.Thread(target=run, name=f"receiver-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving and close every connection."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __repr__(self) -> str:
        return f"Receiver(url={self.url!r}, mode={self._mode!r}, count={self._count})"


_OK = Reply()


async def _wait_until_closed(request: BaseRequest) -> None:
    transport = request.transport
    while transport is not None and not transport.is_closing():
        await asyncio.sleep(0.02)


def _abort(request: BaseRequest) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER 0: close() sends a TCP RST, which the client sees as "connection reset".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def start_receiver(
    host: str = "127.0.0.1", port: int = 0, *, delay_s: float = 0.0, record: str = "full"
) -> Receiver:
    """Start a receiver on its own thread and return it (``.url`` is ready to use).

    :param host: address to bind.
    :param port: port, ``0`` picks a free one.
    :param delay_s: delay before every answer.
    :param record: ``full``, ``no-bodies`` or ``count`` (see :class:`Receiver`).
    """
    return Receiver(host, port, delay_s=delay_s, record=record).start()


def main(argv: list[str] | None = None) -> int:
    """Run a receiver in this process until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m tests.receiver", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay before every answer")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once ready")
    parser.add_argument("--mode", default="ok", choices=MODES)
    parser.add_argument("--seed", type=int, default=0)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-record-bodies", action="store_true", help="keep requests but not their bodies")
    group.add_argument("--count-only", action="store_true", help="keep counters only: flat memory")
    args = parser.parse_args(argv)

    record = "count" if args.count_only else "no-bodies" if args.no_record_bodies else "full"
    server = start_receiver(args.host, args.port, delay_s=args.delay_ms / 1000, record=record)
    if args.mode != "ok":
        server.set_mode(args.mode, seed=args.seed)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    if args.port_file:
        # Write then rename, so a reader never sees a half-written port.
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(str(server.port))
        os.replace(tmp, args.port_file)
    print(f"receiver listening on {server.url} (record={record})", file=sys.stderr, flush=True)
    while not done.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
