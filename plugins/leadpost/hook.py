"""LeadPostHook: turn a lead into the exact request an HttpPost action sends, and send it.

The hook is built once per action and dispatch task. Everything that does not depend on the
lead (encoded static parameters, the header template, the auth connection and its secret) is
prepared once; :meth:`LeadPostHook.build_request` then only encodes the lead's own values, so
it stays within a few microseconds per lead. Sending goes through one pooled
``aiohttp.ClientSession`` per :meth:`LeadPostHook.async_client`, never ``HttpHook.run()``.

Results are values: :meth:`LeadPostClient.send` returns a :class:`~leadpost.states.Outcome`
classified by :func:`~leadpost.states.classify`; only an unsafe target
(:class:`~leadpost.exceptions.UnsafeTargetError`) or a broken configuration
(:class:`~leadpost.exceptions.ConfigError`) raise, because no retry can fix them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import http
import ipaddress
import json
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit

import aiohttp
import requests
from airflow.providers.http.hooks.http import HttpHook
from yarl import URL

from leadpost import __version__
from leadpost.auth import (
    MASK,
    AuthSettings,
    apply_auth,
    auth_from_connection,
    decode_hmac_secret,
    scrub,
    secret_forms,
    sign,
)
from leadpost.auth import auth_digest as _auth_digest
from leadpost.config import ActionConfig, Body, Method
from leadpost.exceptions import ConfigError, UnsafeTargetError
from leadpost.netguard import GuardedResolver, check_address, resolve_and_check
from leadpost.states import Outcome, OutcomeKind, classify

__all__ = [
    "USER_AGENT",
    "LeadPostClient",
    "LeadPostHook",
    "PreparedLeadRequest",
    "TestResult",
    "parse_retry_after",
]

USER_AGENT = f"leadpost/{__version__}"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"
MAX_RETRY_AFTER_S = 3600.0
ERROR_SNIPPET_CHARS = 120
TEST_SNIPPET_CHARS = 500
MAX_ERROR_CHARS = 200
# Read at most this much of a response: enough for a reason, and small bodies keep the connection reusable.
MAX_READ_BYTES = 8192
# Standard Webhooks receivers refuse timestamps older than 5 minutes: re-sign requests that waited.
RESIGN_AFTER_S = 60
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")
# What urllib's quote_plus leaves alone; everything else is %XX of its UTF-8 bytes.
_UNSAFE_BYTES_RE = re.compile(rb"[^A-Za-z0-9_.\-~ ]")
_PERCENT = {i: b"%%%02X" % i for i in range(256)}
_T = TypeVar("_T")

# aiohttp's client never logs URLs at INFO today; keep it that way (a GET query holds lead data).
_aiohttp_client_log = logging.getLogger("aiohttp.client")
if _aiohttp_client_log.level == logging.NOTSET:
    _aiohttp_client_log.setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class PreparedLeadRequest:
    """One lead's request, exactly as it goes on the wire. ``repr`` shows no query, header or body.

    :param method: ``GET`` or ``POST``.
    :param url: the full URL, with the query string for GET (and the auth parameter in query mode).
    :param headers: every header leadpost sets, auth included.
    :param body: the encoded body (``None`` for GET).
    :param lead_id: the lead's id.
    :param idempotency_key: stable per action, lead and lead version; also the ``webhook-id``.
    """

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    lead_id: Any
    idempotency_key: str

    def __repr__(self) -> str:
        base = self.url.split("?", 1)[0]
        size = "none" if self.body is None else f"{len(self.body)} bytes"
        return (
            f"PreparedLeadRequest(method={self.method!r}, url={base!r}{'+query' if '?' in self.url else ''}, "
            f"lead_id={self.lead_id!r}, idempotency_key={self.idempotency_key!r}, body=<{size}>)"
        )


@dataclass(frozen=True, slots=True)
class TestResult:
    """What a test execution sent and got back.

    :param request: the request sent.
    :param outcome: its classified outcome.
    :param response_snippet: the start of the response body (control characters removed, secrets
        masked, at most 500 characters), ``None`` when no response arrived.
    :param elapsed_ms: wall time of the exchange.
    """

    __test__ = False  # not a pytest test class, despite the name

    request: PreparedLeadRequest
    outcome: Outcome
    response_snippet: str | None
    elapsed_ms: float


def _version_text(version: Any) -> str:
    # The same instant must give the same key whichever backend or type delivered it.
    if version is None:
        return ""
    if isinstance(version, str):
        text = version.strip()
        try:
            version = datetime.fromisoformat(text)
        except ValueError:
            return text
    if isinstance(version, datetime):
        aware = version.replace(tzinfo=UTC) if version.tzinfo is None else version.astimezone(UTC)
        return aware.isoformat()
    if isinstance(version, date):
        return version.isoformat()
    return str(version)


def _iso_date(value: Any) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _percent(match: re.Match[bytes]) -> bytes:
    return _PERCENT[match[0][0]]


def _quote_plus(text: str) -> str:
    # Same output as urllib.parse.quote_plus, about twice as fast (this runs for every field of every lead).
    return _UNSAFE_BYTES_RE.sub(_percent, text.encode()).replace(b" ", b"+").decode("ascii")


def _snippet(raw: bytes, forms: tuple[str, ...], limit: int) -> str:
    text = scrub(raw.decode("utf-8", "replace"), forms)
    text = _CONTROL_RE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), capped at one hour.

    :param value: the header value.
    :param now: current epoch seconds (for tests).
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), MAX_RETRY_AFTER_S)


async def _read_some(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside a running loop (a notebook, an async task): use a fresh loop elsewhere.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="leadpost-send") as pool:
        return pool.submit(asyncio.run, coro).result()


class LeadPostHook(HttpHook):
    """Build and send the requests of one HttpPost action.

    Also the hook of the ``leadpost`` connection type (login = key, password = value, extra
    ``auth_mode`` and ``ca_bundle``); Airflow builds it with only ``auth_conn_id`` to test a
    connection, so ``action`` is optional for that use.

    :param action: the action whose requests this hook builds.
    :param action_key: ``TRIGGER.ACTION``; part of every Idempotency-Key.
    :param auth_conn_id: the ``leadpost`` connection, default ``action.auth_conn_id``; ``None`` = no auth.
    :param kwargs: passed to :class:`~airflow.providers.http.hooks.http.HttpHook`.
    """

    conn_name_attr = "auth_conn_id"
    default_conn_name = "leadpost_auth_default"
    conn_type = "leadpost"
    hook_name = "Leadpost HttpPost authentication"

    def __init__(
        self,
        action: ActionConfig | None = None,
        *,
        action_key: str | None = None,
        auth_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        if action is not None and not action_key:
            raise ValueError("action_key ('TRIGGER.ACTION') is required with an action")
        conn_id = auth_conn_id if auth_conn_id is not None else (action.auth_conn_id if action else None)
        method = str(action.method) if action is not None else "POST"
        super().__init__(method=method, http_conn_id=conn_id or self.default_conn_name, **kwargs)
        self.auth_conn_id = conn_id
        self.action = action
        self.action_key = action_key or ""
        self._ready = False
        self._loaded = False
        self._settings: AuthSettings | None = None
        self._secret: bytes | None = None
        self._forms: tuple[str, ...] = ()
        self._ssl: ssl.SSLContext | None = None
        if action is not None:
            self._precompute(action)

    # --- preparation (once per hook) ---------------------------------------------------------

    def _precompute(self, action: ActionConfig) -> None:
        parts = urlsplit(action.url)
        self._base_url = action.url
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._https = parts.scheme == "https"
        self._is_get = action.method is Method.GET
        self._body_kind = action.body_kind
        self._fields = tuple((field, name, quote_plus(name) + "=") for field, name in action.fields.items())
        self._static_pairs = tuple(action.params.items())
        self._static_query = urlencode(self._static_pairs)
        self._key_prefix = hashlib.sha256(f"{self.action_key}\x1f".encode())
        self._timeout_s = action.timeout_s

    def _require_action(self) -> ActionConfig:
        if self.action is None:
            raise ValueError("this LeadPostHook was built without an action; pass the ActionConfig")
        return self.action

    @property
    def auth_settings(self) -> AuthSettings | None:
        """The validated auth connection, looked up once; ``None`` when the action has none."""
        if not self._loaded:
            self._settings = self._load_settings() if self.auth_conn_id else None
            self._loaded = True
        return self._settings

    def _load_settings(self) -> AuthSettings:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = self.get_connection(self.auth_conn_id)
        except AirflowNotFoundException:
            raise ConfigError(
                [
                    f"auth_conn_id {self.auth_conn_id!r}: no such Airflow connection; "
                    "create one of type 'leadpost' (login = key, password = value, extra auth_mode)"
                ]
            ) from None
        return auth_from_connection(conn)

    def _setup(self) -> None:
        if self._ready:
            return
        action = self._require_action()
        settings = self.auth_settings
        headers: dict[str, str] = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        if self._body_kind is Body.FORM:
            headers["Content-Type"] = FORM_CONTENT_TYPE
        elif self._body_kind is Body.JSON:
            headers["Content-Type"] = JSON_CONTENT_TYPE
        auth_params: list[tuple[str, str]] = []
        if settings is not None:
            self._check_settings(action, settings)
            apply_auth(settings, headers=headers, params=auth_params)
            self._forms = secret_forms(settings)
            if settings.mode == "hmac":
                self._secret = decode_hmac_secret(settings.value, conn_id=settings.conn_id)
        self._headers = headers
        self._auth_key = auth_params[0][0] if auth_params else None
        self._auth_query = urlencode(auth_params)
        self._post_url = self._base_url + (f"?{self._auth_query}" if self._auth_query else "")
        self._post_yurl = URL(self._post_url, encoded=True)
        self._ready = True

    def _check_settings(self, action: ActionConfig, settings: AuthSettings) -> None:
        where = f"connection {settings.conn_id!r}"
        if settings.mode == "query":
            taken = set(action.params) | set(action.fields.values())
            if settings.key in taken:
                raise ConfigError(
                    [
                        f"{where}: query auth parameter {settings.key!r} is also a parameter of action "
                        f"{self.action_key!r}; rename one of them"
                    ]
                )
        if settings.host and settings.host != self._host.lower():
            raise ConfigError(
                [
                    f"{where}: host is pinned to {settings.host!r} but action {self.action_key!r} points at "
                    f"{self._host!r}; fix the action URL or the connection's host"
                ]
            )

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if not self._https:
            return True
        if self._ssl is None:
            cafile = self._settings.ca_bundle if self._settings else None
            try:
                self._ssl = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    [
                        f"connection {self.auth_conn_id!r}: extra.ca_bundle {cafile!r} cannot be loaded "
                        f"({exc.__class__.__name__}); give a readable PEM file"
                    ]
                ) from None
        return self._ssl

    # --- building requests (per lead: keep it cheap) -----------------------------------------

    def idempotency_key(self, lead_id: Any, lead_version: Any) -> str:
        """``lp_`` + 32 hex chars of SHA-256(action key, lead id, lead version in UTC ISO form).

        :param lead_id: the lead's id.
        :param lead_version: the lead's ``updated_at`` (datetime or ISO text) or ``None``.
        """
        digest = self._key_prefix.copy()
        digest.update(f"{lead_id}\x1f{_version_text(lead_version)}".encode())
        return "lp_" + digest.hexdigest()[:32]

    def build_request(
        self, lead: Mapping[str, Any], *, lead_version: datetime | str | None = None
    ) -> PreparedLeadRequest:
        """Encode one lead into the request the action sends.

        In hmac mode the signature carries the build time; the client re-signs a request that
        waited more than a minute (retries), keeping the same ``webhook-id``.

        :param lead: ``id``, the lead fields and optionally ``updated_at``.
        :param lead_version: the version the Idempotency-Key stands for; default ``lead["updated_at"]``.
        """
        if not self._ready:
            self._setup()
        lead_id = lead["id"]
        key = self.idempotency_key(lead_id, lead.get("updated_at") if lead_version is None else lead_version)
        pairs: list[tuple[str, str, str]] = []
        for field, name, quoted_name in self._fields:
            value = lead.get(field)
            if value is None:
                continue
            if field == "birth_date":
                text = _iso_date(value)
            else:
                text = value if isinstance(value, str) else str(value)
            text = text.strip()
            if text:
                pairs.append((name, text, quoted_name))

        headers = dict(self._headers)
        headers["Idempotency-Key"] = key
        if self._is_get:
            encoded = "&".join([quoted + _quote_plus(text) for _, text, quoted in pairs])
            query = "&".join(q for q in (self._static_query, encoded, self._auth_query) if q)
            url = f"{self._base_url}?{query}" if query else self._base_url
            body: bytes | None = None
        else:
            url = self._post_url
            if self._body_kind is Body.JSON:
                doc = dict(self._static_pairs)
                for name, text, _ in pairs:
                    doc[name] = text
                body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
            else:
                encoded = "&".join([quoted + _quote_plus(text) for _, text, quoted in pairs])
                body = (
                    f"{self._static_query}&{encoded}"
                    if self._static_query and encoded
                    else self._static_query or encoded
                ).encode("ascii")
        if self._secret is not None:
            timestamp = int(time.time())
            headers["webhook-id"] = key
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = sign(self._secret, key, timestamp, body or b"")
        return PreparedLeadRequest(self.method, url, headers, body, lead_id, key)

    def _resigned(self, req: PreparedLeadRequest) -> PreparedLeadRequest:
        now = int(time.time())
        if now - int(req.headers.get("webhook-timestamp", now)) < RESIGN_AFTER_S or self._secret is None:
            return req
        headers = dict(req.headers)
        headers["webhook-timestamp"] = str(now)
        headers["webhook-signature"] = sign(self._secret, req.idempotency_key, now, req.body or b"")
        return PreparedLeadRequest(req.method, req.url, headers, req.body, req.lead_id, req.idempotency_key)

    # --- sending -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def async_client(self, concurrency: int) -> AsyncIterator[LeadPostClient]:
        """One pooled HTTP client for this action: ``async with hook.async_client(16) as client``.

        :param concurrency: connections in the pool (= requests in flight).
        :raises UnsafeTargetError: when the URL is a literal IP that is not allowed.
        :raises ConfigError: when the auth connection is missing or invalid.
        """
        self._setup()
        literal = _literal_ip(self._host)
        if literal is not None:
            # aiohttp does not ask the resolver about IP literals: check them here.
            check_address(self._host, literal)
        connector = aiohttp.TCPConnector(
            limit=max(1, concurrency), resolver=GuardedResolver(), ssl=self._ssl_context()
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        try:
            yield LeadPostClient(self, session)
        finally:
            await session.close()

    def send_one(self, lead: Mapping[str, Any], *, lead_version: datetime | str | None = None) -> TestResult:
        """Send one lead now and wait for the answer (test executions). Synchronous.

        :param lead: the lead to send.
        :param lead_version: see :meth:`build_request`.
        :raises UnsafeTargetError: when the target is not allowed.
        """

        async def exchange() -> TestResult:
            async with self.async_client(1) as client:
                req = self.build_request(lead, lead_version=lead_version)
                started = time.perf_counter()
                outcome, raw = await client.exchange(req)
                elapsed_ms = (time.perf_counter() - started) * 1000
            snippet = None if raw is None else _snippet(raw, self._forms, TEST_SNIPPET_CHARS)
            return TestResult(req, outcome, snippet, elapsed_ms)

        return _run_sync(exchange())

    # --- presenting --------------------------------------------------------------------------

    def describe(self, req: PreparedLeadRequest) -> str:
        """A printable description of ``req`` with every secret shown as ``***``.

        :param req: a request built by this hook.
        """
        self._setup()
        settings = self._settings
        url = req.url
        if self._auth_query:
            url = url.replace(self._auth_query, f"{self._auth_key}={MASK}")
        masked_headers = {"authorization", "webhook-signature"}
        if settings is not None and settings.mode == "header":
            masked_headers.add(settings.key.lower())
        lines = [f"{req.method} {scrub(url, self._forms)}", "Headers:"]
        for name, value in req.headers.items():
            lines.append(f"  {name}: {MASK if name.lower() in masked_headers else scrub(value, self._forms)}")
        query = urlsplit(req.url).query
        if query:
            lines.append("Query parameters:")
            lines.extend(self._param_lines(parse_qsl(query, keep_blank_values=True)))
        if req.body is not None:
            kind = self._body_kind.value if self._body_kind else "raw"
            lines.append(f"Body ({kind}, {len(req.body)} bytes):")
            text = req.body.decode("utf-8", "replace")
            lines.append(f"  {scrub(text, self._forms)}")
            if self._body_kind is Body.FORM and req.body:
                lines.append("Form fields:")
                lines.extend(self._param_lines(parse_qsl(text, keep_blank_values=True)))
        return "\n".join(lines)

    def _param_lines(self, pairs: list[tuple[str, str]]) -> list[str]:
        return [
            f"  {name} = {MASK if name == self._auth_key else scrub(value, self._forms)}"
            for name, value in pairs
        ]

    def auth_digest(self) -> str:
        """Digest of the auth connection's settings for the activation fingerprint; ``""`` without one."""
        return _auth_digest(self.auth_settings) if self.auth_conn_id else ""

    # --- HttpHook / connection-type compatibility ----------------------------------------------

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        """A ``requests.Session`` carrying this connection's static auth (not used by leadpost itself).

        The action's host is checked against the SSRF guard once; hmac signing is per request and
        not applied.

        :param headers: extra headers for the session.
        :param extra_options: ignored (leadpost connections accept no HTTP extras).
        """
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        settings = self.auth_settings
        if settings is not None:
            auth_headers: dict[str, str] = {}
            params: list[tuple[str, str]] = []
            apply_auth(settings, headers=auth_headers, params=params)
            session.headers.update(auth_headers)
            session.params = dict(params)
            if settings.ca_bundle:
                session.verify = settings.ca_bundle
        session.max_redirects = 0
        if self.action is not None:
            resolve_and_check(self._host, self._port)
            self.base_url = self._base_url
            self._base_url_initialized = True
        if headers:
            session.headers.update(headers)
        return session

    def test_connection(self) -> tuple[bool, str]:
        """Validate the connection's fields (no request is sent: the URL lives in the action)."""
        try:
            settings = self._load_settings()
        except ConfigError as exc:
            return False, "; ".join(exc.problems)
        return True, f"connection {settings.conn_id!r} is valid (auth mode {settings.mode})"

    def __repr__(self) -> str:
        return f"LeadPostHook(action_key={self.action_key!r}, auth_conn_id={self.auth_conn_id!r})"


def _literal_ip(host: str) -> str | None:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return host


class LeadPostClient:
    """One pooled session of a :class:`LeadPostHook`; get it from :meth:`LeadPostHook.async_client`.

    :param hook: the hook whose requests this client sends.
    :param session: the open ``aiohttp.ClientSession``.
    """

    def __init__(self, hook: LeadPostHook, session: aiohttp.ClientSession) -> None:
        self.hook = hook
        self.session = session
        self._timeout_s = hook._timeout_s
        self._forms = hook._forms
        self._where = f"{hook._host}:{hook._port}"

    async def send(self, req: PreparedLeadRequest) -> Outcome:
        """Send one request and classify what came back. Redirects are not followed.

        :param req: built by :meth:`LeadPostHook.build_request`.
        :raises UnsafeTargetError: when the target resolves to an address that is not allowed.
        """
        outcome, _ = await self.exchange(req)
        return outcome

    async def exchange(self, req: PreparedLeadRequest) -> tuple[Outcome, bytes | None]:
        """Like :meth:`send`, also returning the start of the response body (``None`` without a response).

        :param req: built by :meth:`LeadPostHook.build_request`.
        """
        hook = self.hook
        if hook._secret is not None:
            req = hook._resigned(req)
        url = hook._post_yurl if req.url is hook._post_url else URL(req.url, encoded=True)
        try:
            async with self.session.request(
                req.method, url, data=req.body, headers=req.headers, allow_redirects=False
            ) as resp:
                status = resp.status
                try:
                    raw: bytes | None = await _read_some(resp, MAX_READ_BYTES)
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
                    raw = b""  # the status already tells what happened; a cut body changes nothing
                return self._outcome(status, resp, raw or b""), raw
        except UnsafeTargetError:
            raise
        except aiohttp.InvalidURL as exc:
            raise ConfigError(
                [f"action {hook.action_key!r}: the URL is not usable ({exc.__class__.__name__})"]
            ) from None
        except TimeoutError:
            return Outcome(OutcomeKind.TRANSIENT, error=f"timeout after {self._timeout_s:g}s"), None
        except aiohttp.ClientError as exc:
            return Outcome(OutcomeKind.TRANSIENT, error=_short(self._connection_error(exc))), None

    def _outcome(self, status: int, resp: aiohttp.ClientResponse, raw: bytes) -> Outcome:
        kind = classify(status)
        if kind is OutcomeKind.DELIVERED:
            return Outcome(kind, status)
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = _snippet((resp.reason or "").encode(), self._forms, 40)
        error = f"HTTP {status} {phrase}".rstrip()
        location = resp.headers.get("Location")
        if 300 <= status < 400 and location:
            error += (
                f": redirect to {_snippet(location.encode(), self._forms, ERROR_SNIPPET_CHARS)} not followed"
            )
        elif raw:
            error += f": {_snippet(raw, self._forms, ERROR_SNIPPET_CHARS)}"
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        return Outcome(kind, status, _short(error), retry_after)

    def _connection_error(self, exc: aiohttp.ClientError) -> str:
        where = self._where
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return f"DNS lookup failed for {self.hook._host}"
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return (
                f"TLS certificate of {where} not trusted (set extra.ca_bundle on the connection if private)"
            )
        if isinstance(exc, aiohttp.ClientSSLError):
            return f"TLS handshake with {where} failed"
        if isinstance(exc, aiohttp.ClientConnectorError):
            code = exc.os_error.errno
            if code == errno.ECONNREFUSED:
                return f"connection refused: {where}"
            if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                return f"host unreachable: {where}"
            return f"cannot connect to {where}: {exc.os_error.strerror or exc.os_error.__class__.__name__}"
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return f"{where} closed the connection without answering"
        if isinstance(exc, aiohttp.ClientOSError):
            if exc.errno == errno.ECONNRESET:
                return f"connection reset by {where}"
            return f"connection error with {where}: {exc.strerror or exc.__class__.__name__}"
        if isinstance(exc, aiohttp.ClientResponseError):
            return f"invalid HTTP response from {where}"
        return f"request to {where} failed: {exc.__class__.__name__}"
