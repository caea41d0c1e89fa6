"""LeadPostHook: turn a lead into the exact request an HttpPost action sends, and send it.

The hook is built once per action and dispatch task. It reads the auth connection once, checks
it against the action, and prepares everything that does not depend on the lead, so that
:meth:`LeadPostHook.build_request` (from :class:`~leadpost.request.RequestBuilder`) only encodes
the lead's own values. Sending goes through one pooled ``aiohttp.ClientSession`` per
:meth:`LeadPostHook.async_client`, never ``HttpHook.run()``; the
:class:`~leadpost.client.LeadPostClient` it yields classifies every answer into an
:class:`~leadpost.states.Outcome`.

The hook is also the hook of the ``leadpost`` connection type (``get_provider_info`` names
``leadpost.hook.LeadPostHook``). :class:`PreparedLeadRequest`, :class:`LeadPostClient`,
:data:`USER_AGENT` and :func:`parse_retry_after` are re-exported here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import requests
from airflow.providers.http.hooks.http import HttpHook

from leadpost.auth import AuthSettings, apply_auth, auth_from_connection
from leadpost.auth import auth_digest as _auth_digest
from leadpost.client import LeadPostClient, parse_retry_after, snippet
from leadpost.config import ActionConfig
from leadpost.exceptions import ConfigError
from leadpost.netguard import GuardedResolver, check_address, resolve_and_check
from leadpost.request import USER_AGENT, PreparedLeadRequest, RequestBuilder
from leadpost.states import Outcome

__all__ = [
    "USER_AGENT",
    "LeadPostClient",
    "LeadPostHook",
    "PreparedLeadRequest",
    "TestResult",
    "parse_retry_after",
]

TEST_SNIPPET_CHARS = 500
_T = TypeVar("_T")


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


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside a running loop (a notebook, an async task): use a fresh loop elsewhere.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="leadpost-send") as pool:
        return pool.submit(asyncio.run, coro).result()


def _literal_ip(host: str) -> str | None:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return host


class LeadPostHook(RequestBuilder, HttpHook):
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
            self._prepare_action(action)

    # --- preparation (once per hook) ---------------------------------------------------------

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
        if settings is not None:
            self._check_settings(action, settings)
        self._prepare_auth(settings)
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
            text = None if raw is None else snippet(raw, forms=self._forms, limit=TEST_SNIPPET_CHARS)
            return TestResult(req, outcome, text, elapsed_ms)

        return _run_sync(exchange())

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
