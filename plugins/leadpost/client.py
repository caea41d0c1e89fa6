"""LeadPostClient: send prepared requests over one pooled session and turn each answer into an Outcome.

Results are values: :meth:`LeadPostClient.send` returns a :class:`~leadpost.states.Outcome`
classified by :func:`~leadpost.states.classify`, with a short error that names the status or the
connection problem (never a secret: response text is scrubbed first). Only an unsafe target
(:class:`~leadpost.exceptions.UnsafeTargetError`) or an unusable URL
(:class:`~leadpost.exceptions.ConfigError`) raise, because no retry can fix them.
"""

from __future__ import annotations

import errno
import http
import logging
import re
import time
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from leadpost.auth import scrub
from leadpost.exceptions import ConfigError, UnsafeTargetError
from leadpost.states import Outcome, OutcomeKind, classify

if TYPE_CHECKING:
    from leadpost.request import PreparedLeadRequest, RequestBuilder

__all__ = ["MAX_RETRY_AFTER_S", "LeadPostClient", "parse_retry_after", "snippet"]

MAX_RETRY_AFTER_S = 3600.0
ERROR_SNIPPET_CHARS = 120
MAX_ERROR_CHARS = 200
# Read at most this much of a response: enough for a reason, and small bodies keep the connection reusable.
MAX_READ_BYTES = 8192
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")

# aiohttp's client never logs URLs at INFO today; keep it that way (a GET query holds lead data).
_aiohttp_client_log = logging.getLogger("aiohttp.client")
if _aiohttp_client_log.level == logging.NOTSET:
    _aiohttp_client_log.setLevel(logging.WARNING)


def snippet(raw: bytes, *, forms: tuple[str, ...], limit: int) -> str:
    """The start of a response as one line of text: secrets masked, control characters removed.

    :param raw: the bytes received.
    :param forms: the secret's forms to mask (see :func:`~leadpost.auth.secret_forms`).
    :param limit: at most this many characters (``…`` marks a cut).
    """
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
    first = await resp.content.read(limit)
    if resp.content.at_eof() or not first:  # the usual short answer: one read
        return first
    chunks: list[bytes] = [first]
    size = len(first)
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class LeadPostClient:
    """One pooled session of a :class:`~leadpost.hook.LeadPostHook`; get it from its ``async_client``.

    :param hook: the hook whose requests this client sends (its prepared target, timeout and secret).
    :param session: the open ``aiohttp.ClientSession``.
    """

    def __init__(self, hook: RequestBuilder, session: aiohttp.ClientSession) -> None:
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
            phrase = snippet((resp.reason or "").encode(), forms=self._forms, limit=40)
        error = f"HTTP {status} {phrase}".rstrip()
        location = resp.headers.get("Location")
        if 300 <= status < 400 and location:
            target = snippet(location.encode(), forms=self._forms, limit=ERROR_SNIPPET_CHARS)
            error += f": redirect to {target} not followed"
        elif raw:
            error += f": {snippet(raw, forms=self._forms, limit=ERROR_SNIPPET_CHARS)}"
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
