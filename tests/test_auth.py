"""The ``leadpost`` connection type: the five auth modes, validation, HMAC signing and masking."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest
from airflow.sdk import BaseHook
from standardwebhooks import Webhook

from leadpost import auth
from leadpost.auth import (
    AuthSettings,
    apply_auth,
    auth_digest,
    auth_from_connection,
    masked,
    sign,
    signature_headers,
)
from leadpost.exceptions import ConfigError

CANARY = "canary-S3cr3t-7f3a9"
WHSEC = "whsec_" + base64.b64encode(b"an-hmac-signing-key-of-32-bytes!").decode()


def _connection(monkeypatch, conn_id: str, **fields):
    """Define a connection the way operators do (AIRFLOW_CONN_<ID> JSON) and read it back through Airflow."""
    fields.setdefault("conn_type", "leadpost")
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
    return BaseHook.get_connection(conn_id)


@pytest.mark.parametrize(
    ("extra", "login", "password", "mode"),
    [
        ({}, "user", CANARY, "basic"),  # basic is the default
        ({"auth_mode": "basic"}, "user", CANARY, "basic"),
        ({"auth_mode": "header"}, "X-Api-Key", CANARY, "header"),
        ({"auth_mode": "query"}, "api_key", CANARY, "query"),
        ({"auth_mode": "bearer"}, None, CANARY, "bearer"),
        ({"auth_mode": "HMAC"}, None, WHSEC, "hmac"),
    ],
)
def test_each_mode_is_read_from_an_airflow_connection(monkeypatch, extra, login, password, mode):
    conn = _connection(monkeypatch, "crm_auth", login=login, password=password, extra=extra)
    settings = auth_from_connection(conn)
    assert settings.mode == mode
    assert settings.key == (login or "")
    assert settings.value == password
    assert settings.conn_id == "crm_auth"
    assert settings.ca_bundle is None


def test_apply_auth_puts_each_mode_where_the_receiver_expects_it():
    def applied(mode: str, key: str = "k"):
        headers: dict[str, str] = {}
        params: list[tuple[str, str]] = []
        apply_auth(AuthSettings(mode, key, CANARY), headers=headers, params=params)
        return headers, params

    token = base64.b64encode(f"user:{CANARY}".encode()).decode()
    assert applied("basic", "user") == ({"Authorization": f"Basic {token}"}, [])
    assert applied("header", "X-Api-Key") == ({"X-Api-Key": CANARY}, [])
    assert applied("query", "api_key") == ({}, [("api_key", CANARY)])
    assert applied("bearer") == ({"Authorization": f"Bearer {CANARY}"}, [])
    assert applied("hmac") == ({}, [])  # signed per request, see signature_headers


def test_unknown_auth_mode_names_the_connection_and_the_field(monkeypatch):
    conn = _connection(monkeypatch, "crm_auth", login="u", password=CANARY, extra={"auth_mode": "digest"})
    with pytest.raises(ConfigError) as info:
        auth_from_connection(conn)
    assert "connection 'crm_auth': extra.auth_mode: unknown auth mode 'digest'" in str(info.value)
    assert "basic, header, query, bearer, hmac" in str(info.value)


def test_unknown_extras_are_refused_not_forwarded(monkeypatch):
    extra = {"auth_mode": "header", "X-Other": "1", "timeout": 3, "ca_bundle": None}
    conn = _connection(monkeypatch, "crm_auth", login="X-Key", password=CANARY, extra=extra)
    with pytest.raises(ConfigError) as info:
        auth_from_connection(conn)
    assert "unknown field(s) 'X-Other', 'timeout'" in str(info.value)
    assert "connection 'crm_auth'" in str(info.value)


@pytest.mark.parametrize(
    ("login", "password"), [("X-Key\r\nInjected: 1", CANARY), ("X-Key", CANARY + "\nX: y")]
)
def test_cr_lf_in_key_or_value_is_refused(monkeypatch, login, password):
    conn = _connection(monkeypatch, "crm_auth", login=login, password=password, extra={"auth_mode": "header"})
    with pytest.raises(ConfigError, match="contains CR, LF or NUL"):
        auth_from_connection(conn)


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("my-secret!", "must be 'whsec_' followed by base64"),
        ("whsec_my-secret!", "not valid base64"),
        ("whsec_abc$def", "not valid base64"),
        ("whsec_", "not valid base64|empty"),
    ],
)
def test_an_hmac_secret_that_is_not_whsec_base64_is_refused_clearly(monkeypatch, password, message):
    conn = _connection(monkeypatch, "hooks_auth", password=password, extra={"auth_mode": "hmac"})
    with pytest.raises(ConfigError, match=message) as info:
        auth_from_connection(conn)
    assert "connection 'hooks_auth': password" in str(info.value)


def test_other_config_problems_are_reported_together(monkeypatch):
    conn = _connection(monkeypatch, "crm_auth", login="", password="", extra={"auth_mode": "header"})
    with pytest.raises(ConfigError) as info:
        auth_from_connection(conn)
    assert any("password (value) is empty" in p for p in info.value.problems)
    assert any("login (key) is required for auth_mode 'header'" in p for p in info.value.problems)


def test_header_mode_may_not_overwrite_leadpost_headers(monkeypatch):
    conn = _connection(
        monkeypatch, "crm_auth", login="Idempotency-Key", password=CANARY, extra={"auth_mode": "header"}
    )
    with pytest.raises(ConfigError, match="a header leadpost sets itself"):
        auth_from_connection(conn)


def test_a_connection_of_another_type_is_refused(monkeypatch):
    conn = _connection(monkeypatch, "crm_auth", conn_type="http", login="u", password=CANARY)
    with pytest.raises(
        ConfigError, match="has type 'http'; auth_conn_id must name a connection of type 'leadpost'"
    ):
        auth_from_connection(conn)


def test_ca_bundle_and_pinned_host_are_read(monkeypatch, tmp_path):
    bundle = tmp_path / "ca.pem"
    extra = {"auth_mode": "bearer", "ca_bundle": str(bundle)}
    conn = _connection(
        monkeypatch, "crm_auth", password=CANARY, host="https://CRM.example.com:8443/x", extra=extra
    )
    settings = auth_from_connection(conn)
    assert settings.ca_bundle == str(bundle)
    assert settings.host == "crm.example.com"


def test_the_value_never_shows_in_repr_str_or_masked():
    settings = AuthSettings("basic", "user", CANARY, conn_id="crm_auth")
    for text in (repr(settings), str(settings), f"{settings}", repr(masked(settings)), repr([settings])):
        assert CANARY not in text
    assert masked(settings)["value"] == "***"
    assert masked(settings)["key"] == "user"


def test_auth_digest_changes_with_the_settings_and_never_holds_the_value():
    base = AuthSettings("basic", "user", CANARY)
    digest = auth_digest(base)
    assert len(digest) == 64 and CANARY not in digest
    assert digest == auth_digest(AuthSettings("basic", "user", CANARY))
    assert digest != auth_digest(AuthSettings("basic", "user", CANARY + "x"))  # rotated secret: re-test
    assert digest != auth_digest(AuthSettings("bearer", "user", CANARY))
    assert digest != auth_digest(AuthSettings("basic", "other", CANARY))
    assert auth_digest(None) == ""


def test_the_value_is_registered_with_the_airflow_secrets_masker(monkeypatch):
    from airflow.sdk._shared.secrets_masker import redact

    secret = "masker-canary-5b1e2c9d"
    auth_from_connection(_connection(monkeypatch, "masked_auth", login="user", password=secret))
    assert secret not in str(redact(f"value={secret}"))


# --- HMAC (Standard Webhooks) -------------------------------------------------------------------


def test_sign_matches_the_spec_formula_and_the_reference_library():
    key = base64.b64decode(WHSEC.removeprefix("whsec_"))
    msg_id, timestamp, body = "lp_0123", 1_767_225_600, b"nome=Jo%C3%A3o&email=a%40b.com"
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    assert sign(key, msg_id, timestamp, body) == f"v1,{expected}"
    reference = Webhook(WHSEC).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body)
    assert sign(key, msg_id, timestamp, body) == reference


def test_sign_known_answer_from_the_published_example():
    # The example of the Standard Webhooks / Svix documentation: any change to the signing input
    # (separators, encoding, order) would break every receiver.
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


def test_signature_headers_verify_with_the_reference_library():
    key = base64.b64decode(WHSEC.removeprefix("whsec_"))
    now = int(datetime.now(UTC).timestamp())
    body = json.dumps({"email": "ana@example.com", "nome": "Ana"}).encode()
    headers = signature_headers(key, msg_id="lp_abc", timestamp=now, body=body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert Webhook(WHSEC).verify(body, headers) == {"email": "ana@example.com", "nome": "Ana"}


def test_an_unpadded_secret_is_accepted_like_the_reference_library_does():
    raw = b"twenty-four-byte-key-123"[:23]  # 23 bytes: base64 needs padding
    unpadded = "whsec_" + base64.b64encode(raw).decode().rstrip("=")
    assert auth.decode_hmac_secret(unpadded) == raw
    headers = signature_headers(raw, msg_id="m", timestamp=int(datetime.now(UTC).timestamp()), body=b"x")
    Webhook(unpadded).verify(b"x", headers, json_parse=False)
