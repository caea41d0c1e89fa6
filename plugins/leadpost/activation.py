"""Test execution ("Teste de execução") and action status, shared by the CLI, the DAGs and the UI.

An action sends nothing until one test request against the real endpoint succeeded for its
*current* fingerprint (everything that shapes the request, the auth connection's settings
included, hashed). Change anything and it is ``untested`` again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from leadpost.exceptions import LeadpostError, UnsafeTargetError
from leadpost.ledger import LEAD_COLUMNS, ActionState, get_action_state, record_test
from leadpost.states import ActionStatus, Outcome, OutcomeKind
from leadpost.store import leads, utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from leadpost.config import ActionConfig, TriggerConfig
    from leadpost.hook import LeadPostHook

__all__ = ["SAMPLE_LEAD", "TestReport", "action_state", "hint_for", "load_lead", "run_test"]

log = logging.getLogger(__name__)

# Sent when no lead is named: it exercises every field without exposing a real person's data.
SAMPLE_LEAD: dict[str, Any] = {
    "id": 0,
    "email": "teste@leadpost.dev",
    "name": "Lead de Teste São João",
    "birth_date": date(1990, 1, 15),
    "phone": "+55 11 99999-0000",
    "company": "Leadpost Ltda",
    "city": "São Paulo",
    "state": "SP",
    "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
}


@dataclass(frozen=True)
class TestReport:
    """What a test execution did and what it means for the action."""

    __test__ = False  # not a pytest test class

    action_key: str
    ok: bool
    status: ActionStatus
    http_status: int | None
    message: str
    hint: str
    request_text: str
    response_snippet: str | None = None
    elapsed_ms: float | None = None

    def render(self) -> str:
        verdict = "PASSED" if self.ok else "FAILED"
        lines = [
            f"Test execution of {self.action_key}: {verdict} — {self.message}",
            "",
            "Request sent:",
            *(f"  {line}" for line in self.request_text.splitlines()),
            "",
            f"Response: {self.http_status if self.http_status is not None else 'none'}"
            + (f" in {self.elapsed_ms:.0f} ms" if self.elapsed_ms is not None else ""),
        ]
        if self.response_snippet:
            lines.append(f"  {self.response_snippet}")
        lines += ["", f"Status: {self.status}", f"Hint: {self.hint}"]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action_key,
            "ok": self.ok,
            "status": str(self.status),
            "http_status": self.http_status,
            "message": self.message,
            "hint": self.hint,
            "request": self.request_text,
            "response": self.response_snippet,
            "elapsed_ms": self.elapsed_ms,
        }


def _key(trigger: TriggerConfig, action: ActionConfig) -> str:
    return f"{trigger.id}.{action.id}"


def _hook(trigger: TriggerConfig, action: ActionConfig) -> LeadPostHook:
    from leadpost.hook import LeadPostHook

    return LeadPostHook(action, action_key=_key(trigger, action))


def action_state(
    engine: Engine, trigger: TriggerConfig, action: ActionConfig, *, hook: LeadPostHook | None = None
) -> ActionState:
    """The action's status judged against its current configuration and auth connection."""
    hook = hook or _hook(trigger, action)
    return get_action_state(
        engine, _key(trigger, action), fingerprint=action.fingerprint(auth_digest=hook.auth_digest())
    )


def load_lead(engine: Engine, lead_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(*LEAD_COLUMNS).where(leads.c.id == lead_id)).first()
    if row is None:
        raise LeadpostError(f"lead {lead_id} does not exist in the lead store")
    return dict(row._mapping)


def hint_for(outcome: Outcome, action: ActionConfig) -> str:
    """What the user should do about a test outcome."""
    status, error = outcome.status, (outcome.error or "").lower()
    if outcome.kind is OutcomeKind.DELIVERED:
        return "the action is active: its pending leads go out on the next run"
    if status == 404:
        return "check the URL: the endpoint answered 404 Not Found"
    if status in (401, 403):
        if action.auth_conn_id:
            return f"check the auth connection '{action.auth_conn_id}' (Key, Value and Auth mode)"
        return "the endpoint wants authentication: set auth_conn_id to a connection of type leadpost"
    if status == 410:
        return (
            "the endpoint answered 410 Gone: it no longer accepts requests; check the URL with the receiver"
        )
    if status is not None and 300 <= status < 400:
        return "the endpoint redirects and redirects are not followed: use the final URL"
    if status is not None and status >= 500:
        return "the endpoint failed (server error): check its logs, then test again"
    if status in (408, 429):
        return "the endpoint is busy or rate limiting: wait a moment and test again"
    if status is not None:
        return "the endpoint refused the request: check parameter names, static params and the body type"
    if "refused" in error or "unreachable" in error or "resolve" in error or "dns" in error:
        return "host unreachable: is the endpoint up, and reachable from the Airflow workers?"
    if "timeout" in error or "timed out" in error:
        return f"no answer within {action.timeout_s:g} s: check the endpoint or raise timeout_s"
    return "the request failed before any response: check the URL, DNS and TLS"


def run_test(
    engine: Engine,
    trigger: TriggerConfig,
    action: ActionConfig,
    *,
    lead_id: int | None = None,
    hook: LeadPostHook | None = None,
) -> TestReport:
    """Send one test execution (the given lead, else :data:`SAMPLE_LEAD`) and store its result.

    A 2xx activates the action for its current fingerprint; anything else leaves it inactive.
    """
    key = _key(trigger, action)
    hook = hook or _hook(trigger, action)
    fingerprint = action.fingerprint(auth_digest=hook.auth_digest())
    lead = load_lead(engine, lead_id) if lead_id is not None else SAMPLE_LEAD
    # A test must not share its Idempotency-Key with the lead's real delivery later on.
    version = f"test:{utcnow().isoformat()}"
    try:
        result = hook.send_one(lead, lead_version=version)
    except UnsafeTargetError as exc:
        message = str(exc)
        status = record_test(
            engine, key, fingerprint=fingerprint, ok=False, status_code=None, message=message
        )
        hint = "allow its network in [leadpost] allowed_networks if this endpoint is meant to be internal"
        return TestReport(
            key, False, status, None, message, hint, request_text=f"{action.method} {action.url}"
        )
    outcome = result.outcome
    ok = outcome.kind is OutcomeKind.DELIVERED
    message = f"HTTP {outcome.status}" if ok else (outcome.error or f"HTTP {outcome.status}")
    status = record_test(
        engine, key, fingerprint=fingerprint, ok=ok, status_code=outcome.status, message=message
    )
    return TestReport(
        key,
        ok,
        status,
        outcome.status,
        message,
        hint_for(outcome, action),
        request_text=hook.describe(result.request),
        response_snippet=result.response_snippet,
        elapsed_ms=result.elapsed_ms,
    )
