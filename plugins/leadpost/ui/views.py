"""What the Leadpost page shows: the triggers file and the lead store, read fresh into response models.

Nothing here is cached but the one-time table creation per store; a broken triggers file or an
unreachable store becomes a message in the view, never an exception, so the page always says why.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pendulum
import sqlalchemy as sa

from leadpost.activation import action_state
from leadpost.auth import MASK
from leadpost.config import (
    ActionConfig,
    Filters,
    TriggerConfig,
    TriggersFile,
    default_triggers_path,
    load_triggers,
)
from leadpost.exceptions import ConfigError, LeadpostError
from leadpost.ledger import Selection, count_deliveries, list_recent_attempts
from leadpost.states import ActionStatus, DeliveryState
from leadpost.store import get_engine, init_db, leads
from leadpost.ui.masking import mask_email, mask_emails, param_masker, scrub_lead
from leadpost.ui.models import (
    ActionOut,
    AttemptOut,
    CountsOut,
    EndpointOut,
    LastTestOut,
    TriggerOut,
    TriggersOut,
)

__all__ = [
    "action_view",
    "attempts_view",
    "describe_filters",
    "load_triggers_file",
    "next_run",
    "store_engine",
    "store_or_error",
    "triggers_path",
    "triggers_view",
]

_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}
_SCORE_OPS = {"eq": "=", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤"}


# Stores whose tables exist, by URL (password hidden): init_db runs once per store and process.
_ready_urls: set[str] = set()
_ready_lock = threading.Lock()


def store_engine() -> sa.Engine:
    """The lead store, its tables created once per process."""
    engine = get_engine()
    key = engine.url.render_as_string(hide_password=True)
    if key not in _ready_urls:
        with _ready_lock:
            init_db(engine)
            _ready_urls.add(key)
    return engine


def store_or_error() -> tuple[sa.Engine | None, str | None]:
    """``(engine, None)``, or ``(None, why)`` when the lead store cannot be reached."""
    try:
        return store_engine(), None
    except sa.exc.SQLAlchemyError as exc:  # the page still lists triggers and says why counts are missing
        orig = getattr(exc, "orig", None) or exc
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
        return None, f"the lead store cannot be reached ({type(orig).__name__}: {first[:200]})"


def triggers_path() -> Path:
    """The triggers file the page reads (``LEADPOST_TRIGGERS`` or the default)."""
    return default_triggers_path()


def load_triggers_file() -> tuple[TriggersFile | None, list[str]]:
    """``(triggers, [])``, or ``(None, problems)`` when the triggers file is invalid or unreadable."""
    path = triggers_path()
    try:
        return load_triggers(path), []
    except ConfigError as exc:
        return None, list(exc.problems)
    except OSError as exc:  # a directory, no permission…: still a message on the page, not a 500
        return None, [f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"]


def next_run(schedule: str | None, timezone: str, *, now: datetime | None = None) -> datetime | None:
    """When the cron next fires, in the trigger's timezone; ``None`` for manual, ``@once``, ``@continuous``.

    :param schedule: cron expression or preset.
    :param timezone: IANA name the cron is read in.
    :param now: the reference time (default: now).
    """
    expr = _PRESETS.get(schedule or "", schedule)
    if not expr or expr.startswith("@"):
        return None
    from croniter import croniter

    start = (now or datetime.now(UTC)).astimezone(ZoneInfo(timezone))
    return croniter(expr, start).get_next(datetime)


def describe_filters(filters: Filters) -> list[str]:
    """The trigger's lead selection in short phrases, for the page.

    :param filters: the trigger's filters.
    """
    parts: list[str] = []
    if filters.tags_any:
        parts.append(f"tags any of {', '.join(filters.tags_any)}")
    if filters.tags_all:
        parts.append(f"tags all of {', '.join(filters.tags_all)}")
    if filters.tags_none:
        parts.append(f"tags none of {', '.join(filters.tags_none)}")
    if filters.score is not None:
        ops = [f"{_SCORE_OPS[k]} {v}" for k, v in filters.score.model_dump(exclude_none=True).items()]
        parts.append("score " + " and ".join(ops))
    for name in ("funnel", "state", "city", "company"):
        values = getattr(filters, name)
        if values:
            parts.append(f"{name} {', '.join(values)}")
    if filters.captured_weekday:
        parts.append(f"captured on {', '.join(filters.captured_weekday)}")
    if filters.birthday_today:
        parts.append("birthday today")
    if filters.captured_after is not None:
        parts.append(f"captured after {filters.captured_after.isoformat()}")
    return parts or ["every active lead"]


def _endpoint(action: ActionConfig) -> EndpointOut:
    return EndpointOut(
        method=str(action.method),
        url=action.url,
        body=str(action.body_kind) if action.body_kind else None,
        params=dict.fromkeys(action.params, MASK),
        fields=dict(action.fields),
        auth_conn_id=action.auth_conn_id,
    )


def action_view(engine: sa.Engine | None, trigger: TriggerConfig, action: ActionConfig) -> ActionOut:
    """One action as the page shows it.

    :param engine: the lead store, ``None`` when it cannot be reached (no status or counts then).
    :param trigger: the action's trigger.
    :param action: the action.
    """
    mask = param_masker(action)
    key = f"{trigger.id}.{action.id}"
    status_, reason, last, counts, problem = ActionStatus.UNTESTED, "never tested", None, None, None
    if engine is not None:
        try:
            state = action_state(engine, trigger, action)
        except LeadpostError as exc:  # e.g. the auth connection is missing: the action cannot be judged
            problem = "; ".join(exc.problems) if isinstance(exc, ConfigError) else str(exc)
            reason = "its configuration cannot be used until this is fixed"
        else:
            # a test run from the CLI with --lead may have stored a receiver's echo of that lead
            status_, reason = state.status, mask(mask_emails(state.reason))
            if state.last_test_at is not None:
                last = LastTestOut(
                    at=state.last_test_at,
                    ok=bool(state.last_test_ok),
                    http_status=state.last_test_status,
                    message=mask(mask_emails(state.last_test_message)),
                )
        today = pendulum.now(trigger.timezone).date()
        counts = CountsOut(**count_deliveries(engine, Selection(trigger, action, today)).as_dict())
    return ActionOut(
        key=key,
        trigger_id=trigger.id,
        action_id=action.id,
        status=status_,
        reason=reason,
        endpoint=_endpoint(action),
        counts=counts,
        last_test=last,
        problem=problem,
    )


def triggers_view(loaded: tuple[TriggersFile | None, list[str]] | None = None) -> TriggersOut:
    """Everything the page shows, read fresh from the triggers file and the store.

    :param loaded: the triggers file as :func:`load_triggers_file` returned it (read now when ``None``).
    """
    triggers, problems = loaded if loaded is not None else load_triggers_file()
    engine, store_error = store_or_error() if triggers is not None else (None, None)
    out = []
    for trigger in triggers.triggers if triggers is not None else ():
        out.append(
            TriggerOut(
                id=trigger.id,
                dag_id=trigger.dag_id,
                schedule=trigger.schedule,
                timezone=trigger.timezone,
                next_run=next_run(trigger.schedule, trigger.timezone),
                filters=describe_filters(trigger.filters),
                actions=[action_view(engine, trigger, action) for action in trigger.actions],
            )
        )
    return TriggersOut(
        triggers_file=str(triggers_path()),
        problems=problems,
        store_error=store_error,
        generated_at=datetime.now(UTC),
        triggers=out,
    )


def _lead_values(engine: sa.Engine, lead_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    ids = sorted(set(lead_ids))
    if not ids:
        return {}
    c = leads.c
    query = sa.select(c.id, c.email, c.name, c.phone, c.company, c.city, c.birth_date).where(c.id.in_(ids))
    with engine.connect() as conn:
        return {row.id: dict(row._mapping) for row in conn.execute(query)}


def attempts_view(engine: sa.Engine, action: ActionConfig, key: str, *, limit: int) -> list[AttemptOut]:
    """The action's latest ledger movements, with masked emails and errors free of lead values.

    :param engine: the lead store.
    :param action: the action (its static parameter values are masked out of errors).
    :param key: ``TRIGGER.ACTION``.
    :param limit: at most this many rows, newest first.
    """
    rows = list_recent_attempts(engine, key, limit=limit)
    lead_rows = _lead_values(engine, (r["lead_id"] for r in rows))
    mask = param_masker(action)
    return [
        AttemptOut(
            at=r["updated_at"],
            lead_id=r["lead_id"],
            email=mask_email((lead_rows.get(r["lead_id"]) or {}).get("email")),
            state=DeliveryState(r["state"]),
            status_code=r["last_status"],
            error=mask(mask_emails(scrub_lead(r["last_error"], lead_rows.get(r["lead_id"])))),
            attempts=r["attempts"],
        )
        for r in rows
    ]
