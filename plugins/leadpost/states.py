"""The words leadpost uses for states, shared by the ledger, the hook, the CLI and the UI.

Values are the SPEC's words, so the database, the CLI, JSON and the UI all agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ActionStatus", "DeliveryState", "Outcome", "OutcomeKind", "classify"]


class ActionStatus(StrEnum):
    UNTESTED = "untested"  # new, or its configuration changed since the last successful test
    ACTIVE = "active"
    FAILING = "failing"  # the endpoint kept refusing; re-test to resume
    DISABLED = "disabled"  # 410 Gone


class DeliveryState(StrEnum):
    PENDING = "pending"  # replayed or released: claimable now
    IN_FLIGHT = "in_flight"  # claimed by a dispatcher until claim_expires_at
    RETRYING = "retrying"  # transient failure; claimable again from next_attempt_at
    DELIVERED = "delivered"
    DEAD = "dead"  # dead letter: rejected, or out of attempts


class OutcomeKind(StrEnum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"  # 408, 429, 5xx, timeout, connection error
    REJECTED = "rejected"  # other 4xx: this lead is refused
    AUTH_FAILED = "auth_failed"  # 401, 403: the action's credentials are refused
    GONE = "gone"  # 410: the receiver asked us to stop


def classify(status: int) -> OutcomeKind:
    """Classify an HTTP status code. The one place that decides what a response means."""
    if 200 <= status < 300:
        return OutcomeKind.DELIVERED
    if status in (408, 429) or status >= 500:
        return OutcomeKind.TRANSIENT
    if status in (401, 403):
        return OutcomeKind.AUTH_FAILED
    return OutcomeKind.GONE if status == 410 else OutcomeKind.REJECTED


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request came to.

    :param kind: the classification.
    :param status: HTTP status code, ``None`` when no response arrived.
    :param error: short, secret-free reason (never a response body at length).
    :param retry_after_s: the receiver's ``Retry-After``, in seconds, when it sent one.
    """

    kind: OutcomeKind
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.kind is OutcomeKind.DELIVERED
