"""The five authentication modes of the ``leadpost`` connection type, HMAC signing and masking.

A ``leadpost`` connection holds the key in *login*, the value in *password* and the mode in
the extra field ``auth_mode``:

=========  ==========================================================================
basic      ``Authorization: Basic base64(key:value)`` (the default)
header     a header named *key* with *value*
query      a parameter named *key* with *value* in the URL's query string
bearer     ``Authorization: Bearer <value>``
hmac       Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``;
           *value* is the ``whsec_…`` secret receivers verify with the reference libraries
=========  ==========================================================================

The optional extra ``ca_bundle`` names a PEM file of CAs to trust, and the optional *host*
pins the host the action URL must point at. Nothing else is accepted: an unknown extra is an
error, never forwarded as a header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, urlsplit

from leadpost.exceptions import ConfigError
from leadpost.get_provider_info import AUTH_MODES

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "AUTH_MODES",
    "CONN_TYPE",
    "HMAC_PREFIX",
    "MASK",
    "AuthSettings",
    "apply_auth",
    "auth_digest",
    "auth_from_connection",
    "decode_hmac_secret",
    "masked",
    "scrub",
    "secret_forms",
    "sign",
    "signature_headers",
]

CONN_TYPE = "leadpost"
HMAC_PREFIX = "whsec_"
MASK = "***"
ALLOWED_EXTRAS = ("auth_mode", "ca_bundle")
# Headers leadpost sets itself; a header-mode key must not overwrite them.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Host",
        "Content-Type",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Idempotency-Key",
        "User-Agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    )
)
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 header field name
_CRLF_RE = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The validated authentication of one ``leadpost`` connection. ``repr`` never shows the value.

    :param mode: one of :data:`AUTH_MODES`.
    :param key: the login (user name, header name or parameter name; unused by bearer and hmac).
    :param value: the secret (password, token or ``whsec_`` signing secret).
    :param ca_bundle: path of a PEM file of CAs to trust, or ``None`` for the system store.
    :param conn_id: the connection it came from, for messages.
    :param host: when set, the only host the action URL may point at.
    """

    mode: str
    key: str
    value: str
    ca_bundle: str | None = None
    conn_id: str | None = None
    host: str | None = None

    def __repr__(self) -> str:
        return (
            f"AuthSettings(mode={self.mode!r}, key={self.key!r}, value={MASK!r}, "
            f"ca_bundle={self.ca_bundle!r}, conn_id={self.conn_id!r}, host={self.host!r})"
        )

    __str__ = __repr__


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def decode_hmac_secret(value: str, *, conn_id: str | None = None) -> bytes:
    """Decode a Standard Webhooks secret ``whsec_<base64>`` into the signing key bytes.

    :param value: the secret as stored in the connection.
    :param conn_id: connection id for the message.
    :raises ConfigError: when the prefix is missing or the rest is not valid base64 (a key the
        receiver would not have; lenient decoding would silently drop characters).
    """
    where = f"connection {conn_id!r}: password" if conn_id else "hmac secret"
    if not value.startswith(HMAC_PREFIX):
        raise ConfigError(
            [f"{where}: an hmac secret must be 'whsec_' followed by base64 (Standard Webhooks)"]
        )
    encoded = value.removeprefix(HMAC_PREFIX)
    try:
        # Strict alphabet; missing "=" padding is tolerated as the reference libraries do.
        secret = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            [
                f"{where}: the part after 'whsec_' is not valid base64; generate one with "
                "`python -c \"import base64,os; print('whsec_'+base64.b64encode(os.urandom(32)).decode())\"`"
            ]
        ) from None
    if not secret:
        raise ConfigError([f"{where}: the hmac secret is empty after 'whsec_'"])
    return secret


def auth_from_connection(conn: Any) -> AuthSettings:
    """Validate a ``leadpost`` connection and return its :class:`AuthSettings`.

    The value is registered with Airflow's secrets masker (with the encoded forms it takes on the
    wire) as soon as it is read.

    :param conn: an Airflow ``Connection`` (``conn_id``, ``conn_type``, ``login``, ``password``,
        ``host``, ``extra_dejson``).
    :raises ConfigError: naming the connection id and the field at fault, every problem at once.
    """
    conn_id = getattr(conn, "conn_id", None) or "?"
    key = _text(conn.login)
    value = _text(conn.password)
    if value:
        _register_masks(value, key)

    problems: list[str] = []
    where = f"connection {conn_id!r}"
    conn_type = getattr(conn, "conn_type", None)
    if conn_type not in (None, CONN_TYPE):
        problems.append(
            f"{where}: has type {conn_type!r}; auth_conn_id must name a connection of type 'leadpost'"
        )
    extra = conn.extra_dejson if conn.extra else {}
    if not isinstance(extra, dict):
        problems.append(f"{where}: extra must be a JSON object")
        extra = {}
    unknown = sorted(k for k, v in extra.items() if k not in ALLOWED_EXTRAS and v not in (None, ""))
    if unknown:
        problems.append(
            f"{where}: extra: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"only {', '.join(ALLOWED_EXTRAS)} are accepted (nothing else is sent as headers or params)"
        )
    mode = _text(extra.get("auth_mode")).strip().lower() or "basic"
    if mode not in AUTH_MODES:
        problems.append(
            f"{where}: extra.auth_mode: unknown auth mode {mode!r}; use one of {', '.join(AUTH_MODES)}"
        )
    ca_bundle = _text(extra.get("ca_bundle")).strip() or None
    raw_host = _text(conn.host).strip()
    # Accept "crm.example.com", "crm.example.com:443" or a URL; keep only the host name.
    host = urlsplit(raw_host if "://" in raw_host else f"//{raw_host}").hostname if raw_host else None

    if _CRLF_RE.search(key):
        problems.append(f"{where}: login (key) contains CR, LF or NUL characters")
    if _CRLF_RE.search(value):
        problems.append(f"{where}: password (value) contains CR, LF or NUL characters")
    if not value:
        problems.append(f"{where}: password (value) is empty")
    if mode in ("basic", "header", "query") and not key:
        problems.append(f"{where}: login (key) is required for auth_mode {mode!r}")
    if mode == "basic" and ":" in key:
        problems.append(f"{where}: login (key) may not contain ':' with auth_mode 'basic'")
    if mode == "header" and key:
        if not _TOKEN_RE.match(key):
            problems.append(f"{where}: login (key) {key!r} is not a valid header name")
        elif key.lower() in RESERVED_HEADERS:
            problems.append(
                f"{where}: login (key) {key!r} is a header leadpost sets itself; choose another name"
            )
    if mode == "hmac" and value and not _CRLF_RE.search(value):
        try:
            decode_hmac_secret(value, conn_id=conn_id)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return AuthSettings(mode=mode, key=key, value=value, ca_bundle=ca_bundle, conn_id=conn_id, host=host)


def secret_forms(settings: AuthSettings) -> tuple[str, ...]:
    """Every form the value takes in a request (raw, URL-encoded, Basic token), longest first.

    :param settings: the auth settings.
    """
    value = settings.value
    forms = {value, quote_plus(value), quote(value, safe="")}
    if settings.mode == "basic":
        forms.add(_basic_token(settings.key, value))
    if settings.mode == "hmac":
        forms.add(value.removeprefix(HMAC_PREFIX))
    return tuple(sorted((f for f in forms if f), key=len, reverse=True))


def _register_masks(value: str, key: str) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret(value)
    for form in {quote_plus(value), quote(value, safe=""), value.removeprefix(HMAC_PREFIX)} - {value}:
        mask_secret(form)
    if key and ":" not in key:
        mask_secret(_basic_token(key, value))


def _basic_token(key: str, value: str) -> str:
    return base64.b64encode(f"{key}:{value}".encode()).decode("ascii")


def apply_auth(settings: AuthSettings, *, headers: dict[str, str], params: list[tuple[str, str]]) -> None:
    """Add the static part of the authentication to a request.

    basic, header and bearer add a header; query appends a parameter. hmac adds nothing here:
    it signs each body, see :func:`signature_headers`.

    :param settings: the auth settings.
    :param headers: the request headers, updated in place.
    :param params: the query parameters, appended to in place.
    """
    mode = settings.mode
    if mode == "basic":
        headers["Authorization"] = "Basic " + _basic_token(settings.key, settings.value)
    elif mode == "bearer":
        headers["Authorization"] = "Bearer " + settings.value
    elif mode == "header":
        headers[settings.key] = settings.value
    elif mode == "query":
        params.append((settings.key, settings.value))


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks signature: ``v1,`` + base64(HMAC-SHA256(secret, ``{id}.{timestamp}.`` + body)).

    :param secret: the decoded signing key (bytes, never the ``whsec_`` text).
    :param msg_id: the ``webhook-id`` (leadpost uses the Idempotency-Key).
    :param timestamp: the ``webhook-timestamp``, integer seconds since the epoch.
    :param body: the exact bytes sent (empty for GET).
    """
    mac = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signature_headers(secret: bytes, *, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one request.

    :param secret: the decoded signing key.
    :param msg_id: the message id.
    :param timestamp: integer seconds since the epoch.
    :param body: the exact bytes sent.
    """
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def auth_digest(settings: AuthSettings | None) -> str:
    """SHA-256 over the connection's settings, for the activation fingerprint.

    The value goes into the hash (a rotated secret needs a new test) but never out of it in clear.

    :param settings: the auth settings, ``None`` when the action has no auth connection.
    """
    if settings is None:
        return ""
    blob = json.dumps(
        {
            "mode": settings.mode,
            "key": settings.key,
            "value": hashlib.sha256(settings.value.encode()).hexdigest(),
            "ca_bundle": settings.ca_bundle,
            "host": settings.host,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def masked(settings: AuthSettings) -> dict[str, str | None]:
    """The settings as a dict safe to print: ``value`` is ``"***"``.

    :param settings: the auth settings.
    """
    return {
        "conn_id": settings.conn_id,
        "mode": settings.mode,
        "key": settings.key,
        "value": MASK,
        "ca_bundle": settings.ca_bundle,
        "host": settings.host,
    }


def scrub(text: str, forms: Iterable[str]) -> str:
    """Replace every secret form in ``text`` with ``***``.

    :param text: any text that may echo a secret (a response body, a Location header).
    :param forms: from :func:`secret_forms`.
    """
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text
