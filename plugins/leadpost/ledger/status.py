"""Action status: untested / active / failing / disabled, judged against the fingerprint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from leadpost.states import ActionStatus
from leadpost.store import actions, utcnow
from leadpost.store.engine import dialect_insert

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = ["ActionState", "get_action_state", "read_status", "record_test", "set_action_status"]

log = logging.getLogger(__name__)

_REASON_MAX = 300


@dataclass(frozen=True)
class ActionState:
    """An action's activation state as stored, judged against its current fingerprint."""

    action_key: str
    status: ActionStatus
    reason: str | None = None
    last_test_at: datetime | None = None
    last_test_ok: bool | None = None
    last_test_status: int | None = None
    last_test_message: str | None = None

    @property
    def can_send(self) -> bool:
        return self.status is ActionStatus.ACTIVE


def get_action_state(engine: Engine, action_key: str, *, fingerprint: str) -> ActionState:
    """The action's status; ``untested`` when it was never tested or its configuration changed."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(actions).where(actions.c.action_key == action_key)).mappings().first()
    if row is None:
        return ActionState(action_key, ActionStatus.UNTESTED, "never tested")
    last = {k: row[k] for k in ("last_test_at", "last_test_ok", "last_test_status", "last_test_message")}
    if row["tested_fingerprint"] != fingerprint:
        reason = "configuration changed since the last successful test" if row["tested_fingerprint"] else None
        return ActionState(
            action_key, ActionStatus.UNTESTED, reason or row["status_reason"] or "never passed a test", **last
        )
    return ActionState(action_key, ActionStatus(row["status"]), row["status_reason"], **last)


def _upsert_action(conn: Connection, action_key: str, values: dict[str, Any]) -> None:
    insert = dialect_insert(conn.dialect.name)
    row = {"action_key": action_key, "updated_at": utcnow(), "status": ActionStatus.UNTESTED, **values}
    stmt = insert(actions).values(row)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[actions.c.action_key], set_={k: row[k] for k in row if k != "action_key"}
        )
    )


def record_test(
    engine: Engine,
    action_key: str,
    *,
    fingerprint: str,
    ok: bool,
    status_code: int | None,
    message: str,
) -> ActionStatus:
    """Store a test execution. A pass activates the action for this fingerprint; a failure leaves
    it inactive (untested, or failing/disabled as it was) and keeps the reason."""
    now = utcnow()
    test = {
        "last_test_at": now,
        "last_test_ok": ok,
        "last_test_status": status_code,
        "last_test_message": message[:_REASON_MAX],
    }
    with engine.begin() as conn:
        if ok:
            values = {
                "status": ActionStatus.ACTIVE,
                "status_reason": "test execution passed",
                "tested_fingerprint": fingerprint,
            }
            _upsert_action(conn, action_key, {**values, **test, "consecutive_failures": 0})
            new = ActionStatus.ACTIVE
        else:
            current = conn.execute(
                sa.select(actions.c.status, actions.c.tested_fingerprint).where(
                    actions.c.action_key == action_key
                )
            ).first()
            keep = (
                current is not None
                and current.tested_fingerprint == fingerprint
                and current.status != ActionStatus.ACTIVE
            )
            new = ActionStatus(current.status) if keep else ActionStatus.UNTESTED
            values = {"status": new, "status_reason": f"test execution failed: {message}"[:_REASON_MAX]}
            if not keep:
                values["tested_fingerprint"] = None
            _upsert_action(conn, action_key, {**values, **test})
    log.info("%s: test execution %s -> %s", action_key, "passed" if ok else "failed", new)
    return new


def read_status(engine: Engine, action_key: str) -> ActionStatus | None:
    """The stored status alone (no fingerprint check): cheap enough to ask before every page."""
    with engine.connect() as conn:
        value = conn.execute(sa.select(actions.c.status).where(actions.c.action_key == action_key)).scalar()
    return ActionStatus(value) if value else None


def set_action_status(engine: Engine, action_key: str, status: ActionStatus, *, reason: str) -> bool:
    """Move an active action to ``failing`` or ``disabled`` (logged once, with why).

    :return: whether the status changed (so callers log transitions exactly once).
    """
    with engine.begin() as conn:
        result = conn.execute(
            actions.update()
            .where(actions.c.action_key == action_key, actions.c.status != status)
            .values(status=status, status_reason=reason[:_REASON_MAX], updated_at=utcnow())
        )
    changed = result.rowcount > 0
    if changed:
        log.warning("%s is now %s: %s", action_key, status, reason)
    return changed
