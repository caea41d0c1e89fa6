"""The Leadpost page and its JSON API, mounted by :mod:`leadpost.ui.plugin` at ``/leadpost``.

Routes (all need an Airflow user allowed to view plugins; no token → 401, bad token → 403):

* ``GET /`` — the page (server-rendered HTML, a little vanilla JS, no build step).
* ``GET /api/triggers`` — everything the page shows.
* ``GET /api/actions/{TRIGGER.ACTION}/attempts`` — the action's delivery log.
* ``POST /api/actions/{TRIGGER.ACTION}/test`` — one test execution against the real endpoint.
* ``POST /api/actions/{TRIGGER.ACTION}/replay`` — dead letters back to pending (``status``, ``lead``).
* ``GET /openapi.json``, ``GET /static/{file}``.

The two POST routes change state, so they also need permission to trigger runs of the trigger's
DAG, and protection against cross-site requests: they require the header ``X-Leadpost-CSRF: 1``.
A cross-site HTML form cannot set a custom header, and a cross-site ``fetch`` that sets one needs
a CORS preflight the api-server does not grant; browsers that send ``Sec-Fetch-Site`` must also
say ``same-origin``. Scripts using a bearer token send the header too.

No response carries a secret or a lead value beyond the lead id and a masked email
(``j***@example.com``): auth values are masked by the hook, static parameter values are shown as
``***``, and a lead's own values are blanked out of delivery errors.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote_plus
from zoneinfo import ZoneInfo

import pendulum
import sqlalchemy as sa
from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_view
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict

from leadpost import __version__
from leadpost.activation import action_state, run_test
from leadpost.config import ActionConfig, ActionRef, Filters, TriggerConfig, TriggersFile
from leadpost.exceptions import ConfigError, LeadpostError, UnknownActionError
from leadpost.ledger import Selection, count_deliveries, list_recent_attempts, replay_dead_letters
from leadpost.states import ActionStatus, DeliveryState
from leadpost.store import leads

__all__ = [
    "CSRF_HEADER",
    "ActionOut",
    "AttemptOut",
    "AttemptsOut",
    "CountsOut",
    "EndpointOut",
    "LastTestOut",
    "ReplayOut",
    "TestExecutionOut",
    "TriggerOut",
    "TriggersOut",
    "action_view",
    "attempts_view",
    "create_app",
    "describe_filters",
    "mask_email",
    "mask_emails",
    "next_run",
    "require_run_permission",
    "require_same_origin",
    "triggers_view",
]

log = logging.getLogger(__name__)

CSRF_HEADER = "X-Leadpost-CSRF"
MASK = "***"
HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
PAGE_LOG_ROWS = 10
_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}
_SCORE_OPS = {"eq": "=", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤"}
_BLIND_MASK_MIN = 6  # shorter static values ("1", "true") are masked only where they sit as a parameter
_LEAD_VALUE_MIN = 3
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


# --- response models ----------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CountsOut(_Out):
    """Where an action's leads stand."""

    pending: int
    in_flight: int
    delivered: int
    retrying: int
    dead: int


class LastTestOut(_Out):
    at: datetime
    ok: bool
    http_status: int | None
    message: str | None


class EndpointOut(_Out):
    """Where and how the action sends; static parameter values are always ``***``."""

    method: str
    url: str
    body: str | None
    params: dict[str, str]
    fields: dict[str, str]
    auth_conn_id: str | None


class ActionOut(_Out):
    key: str
    trigger_id: str
    action_id: str
    status: ActionStatus
    reason: str | None
    endpoint: EndpointOut
    counts: CountsOut | None
    last_test: LastTestOut | None
    problem: str | None = None


class TriggerOut(_Out):
    id: str
    dag_id: str
    schedule: str | None
    timezone: str
    next_run: datetime | None
    filters: list[str]
    actions: list[ActionOut]


class TriggersOut(_Out):
    """Everything the page shows. ``problems`` lists every error of the triggers file."""

    triggers_file: str
    problems: list[str]
    store_error: str | None
    generated_at: datetime
    triggers: list[TriggerOut]


class AttemptOut(_Out):
    at: datetime
    lead_id: int
    email: str | None
    state: DeliveryState
    status_code: int | None
    error: str | None
    attempts: int


class AttemptsOut(_Out):
    action: str
    attempts: list[AttemptOut]


class TestExecutionOut(_Out):
    """A test execution as the page shows it: the request sent and the response, secrets masked."""

    action: str
    ok: bool
    status: ActionStatus
    http_status: int | None
    message: str
    hint: str
    request: str
    response: str | None
    elapsed_ms: float | None
    state: ActionOut


class ReplayOut(_Out):
    action: str
    replayed: int
    state: ActionOut


# --- masking ------------------------------------------------------------------------------------


def mask_email(email: str | None) -> str | None:
    """``joao@example.com`` -> ``j***@example.com``; anything else -> ``***``.

    :param email: the address, or ``None``.
    """
    if not email:
        return None
    local, at, domain = email.partition("@")
    return f"{local[:1]}{MASK}@{domain}" if at and local else MASK


def mask_emails(text: str | None) -> str | None:
    """Mask every e-mail address in a free text (receivers echo what they refused).

    :param text: an error or response text, or ``None``.
    """
    return None if text is None else _EMAIL_RE.sub(lambda m: mask_email(m.group(0)) or MASK, text)


def _sub_all(text: str, rules: list[tuple[re.Pattern[str], str]], words: Iterable[str]) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(lambda m, r=replacement: m.group(1) + r, text)
    for word in words:
        text = text.replace(word, MASK)
    return text


def _param_masker(action: ActionConfig) -> Callable[[str | None], str | None]:
    """A function blanking the action's static parameter values out of a text (tokens live there)."""
    rules: list[tuple[re.Pattern[str], str]] = []
    words: set[str] = set()
    for name, value in action.params.items():
        if not value:
            continue
        qn, qv = quote_plus(name), quote_plus(value)
        # name=value in a query string or form body, "  name = value" lines, "name":"value" in JSON
        rules.append((re.compile(rf"((?<![^?&\s]){re.escape(qn)}=){re.escape(qv)}(?=&|\s|$)", re.M), MASK))
        rules.append((re.compile(rf"(^\s*{re.escape(name)} = ){re.escape(value)}$", re.M), MASK))
        jn, jv = json.dumps(name, ensure_ascii=False), json.dumps(value, ensure_ascii=False)
        rules.append((re.compile(rf"({re.escape(jn)}\s*:\s*){re.escape(jv)}"), f'"{MASK}"'))
        if len(value) >= _BLIND_MASK_MIN:
            words |= {value, qv}
    ordered = sorted(words, key=len, reverse=True)

    def mask(text: str | None) -> str | None:
        return None if text is None else _sub_all(text, rules, ordered)

    return mask


def _lead_values(engine: sa.Engine, lead_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    ids = sorted(set(lead_ids))
    if not ids:
        return {}
    c = leads.c
    query = sa.select(c.id, c.email, c.name, c.phone, c.company, c.city, c.birth_date).where(c.id.in_(ids))
    with engine.connect() as conn:
        return {row.id: dict(row._mapping) for row in conn.execute(query)}


def _scrub_lead(text: str | None, lead: dict[str, Any] | None) -> str | None:
    """Blank a lead's own values out of a delivery error (receivers like to echo what they refused)."""
    if text is None or lead is None:
        return text
    values = set()
    for key, value in lead.items():
        if key == "id" or value is None:
            continue
        raw = value.isoformat() if isinstance(value, date) else str(value).strip()
        if len(raw) >= _LEAD_VALUE_MIN:
            values |= {raw, quote_plus(raw)}
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


# --- reading the triggers file and the store ------------------------------------------------------


_ready_urls: set[str] = set()
_ready_lock = threading.Lock()


def _engine() -> sa.Engine:
    """The lead store, its tables created once per process."""
    from leadpost.store import get_engine, init_db

    engine = get_engine()
    key = engine.url.render_as_string(hide_password=True)
    if key not in _ready_urls:
        with _ready_lock:
            init_db(engine)
            _ready_urls.add(key)
    return engine


def _triggers_path() -> Path:
    from leadpost.config import default_triggers_path

    return default_triggers_path()


def _load() -> tuple[TriggersFile | None, list[str]]:
    from leadpost.config import load_triggers

    path = _triggers_path()
    try:
        return load_triggers(path), []
    except ConfigError as exc:
        return None, list(exc.problems)
    except OSError as exc:  # a directory, no permission…: still a message on the page, not a 500
        return None, [f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"]


def _loaded() -> TriggersFile:
    triggers, problems = _load()
    if triggers is None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=["the triggers file is invalid", *problems])
    return triggers


def _resolve(ref: str) -> tuple[TriggerConfig, ActionConfig]:
    try:
        return _loaded().resolve(ActionRef.parse(ref))
    except UnknownActionError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None


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
    """The trigger's lead selection in short phrases, for the page."""
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
    mask = _param_masker(action)
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


def _store() -> sa.Engine:
    """The lead store for routes that cannot work without it (503 with the reason otherwise)."""
    engine, error = _store_or_error()
    if engine is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=error)
    return engine


def _store_or_error() -> tuple[sa.Engine | None, str | None]:
    try:
        return _engine(), None
    except sa.exc.SQLAlchemyError as exc:  # the page still lists triggers and says why counts are missing
        orig = getattr(exc, "orig", None) or exc
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
        return None, f"the lead store cannot be reached ({type(orig).__name__}: {first[:200]})"


def triggers_view(loaded: tuple[TriggersFile | None, list[str]] | None = None) -> TriggersOut:
    """Everything the page shows, read fresh from the triggers file and the store.

    :param loaded: the triggers file as :func:`_load` returned it (read now when ``None``).
    """
    triggers, problems = loaded if loaded is not None else _load()
    engine, store_error = _store_or_error() if triggers is not None else (None, None)
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
        triggers_file=str(_triggers_path()),
        problems=problems,
        store_error=store_error,
        generated_at=datetime.now(UTC),
        triggers=out,
    )


def attempts_view(engine: sa.Engine, action: ActionConfig, key: str, *, limit: int) -> list[AttemptOut]:
    """The action's latest ledger movements, with masked emails and errors free of lead values."""
    rows = list_recent_attempts(engine, key, limit=limit)
    lead_rows = _lead_values(engine, (r["lead_id"] for r in rows))
    mask = _param_masker(action)
    return [
        AttemptOut(
            at=r["updated_at"],
            lead_id=r["lead_id"],
            email=mask_email((lead_rows.get(r["lead_id"]) or {}).get("email")),
            state=DeliveryState(r["state"]),
            status_code=r["last_status"],
            error=mask(mask_emails(_scrub_lead(r["last_error"], lead_rows.get(r["lead_id"])))),
            attempts=r["attempts"],
        )
        for r in rows
    ]


# --- security -----------------------------------------------------------------------------------


def require_run_permission(request: Request, user: GetUserDep) -> None:
    """Test execution and replay act like triggering the trigger's DAG: they need that permission."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.configuration import conf

    try:
        ref = ActionRef.parse(request.path_params.get("ref", ""))
    except UnknownActionError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    dag_id = f"leadpost_{ref.trigger_id}"
    team = None
    if conf.getboolean("core", "multi_team", fallback=False):
        from airflow.models.dag import DagModel

        team = DagModel.get_team_name(dag_id)
    allowed = get_auth_manager().is_authorized_dag(
        method="POST",
        access_entity=DagAccessEntity.RUN,
        details=DagDetails(id=dag_id, team_name=team),
        user=user,
    )
    if not allowed:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"Forbidden: you may not trigger runs of {dag_id}"
        )


def require_same_origin(request: Request) -> None:
    """Refuse cross-site requests to state-changing routes (see the module docstring)."""
    if request.headers.get(CSRF_HEADER) != "1":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"missing header {CSRF_HEADER}: 1 (required on every POST)"
        )
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"cross-site request refused ({site})")


# --- the app ------------------------------------------------------------------------------------

_templates = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]), auto_reload=False
)


def _when(value: datetime | None, timezone: str | None = None) -> str:
    if value is None:
        return "—"
    local = value.astimezone(ZoneInfo(timezone)) if timezone else value.astimezone(UTC)
    return local.strftime("%Y-%m-%d %H:%M") + (f" {local.tzname()}" if local.tzname() else "")


_templates.filters["when"] = _when
ActionPath = Annotated[str, PathParam(description="TRIGGER.ACTION, e.g. vip_sp.crm")]


def create_app() -> FastAPI:
    """The FastAPI app the plugin mounts at ``/leadpost``."""
    app = FastAPI(
        title="Leadpost",
        version=__version__,
        description="Triggers, actions, test execution and dead letters of leadpost. "
        f"POST routes need the header `{CSRF_HEADER}: 1`.",
        openapi_url=None,  # served below, behind the same guard as everything else
        docs_url=None,
        redoc_url=None,
    )
    router = APIRouter(dependencies=[Depends(requires_access_view(AccessView.PLUGINS))])
    changes = [Depends(require_run_permission), Depends(require_same_origin)]

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        triggers, problems = _load()
        view = triggers_view((triggers, problems))
        logs: dict[str, list[AttemptOut]] = {}
        if triggers is not None and view.store_error is None:
            engine = _engine()
            for trigger in triggers.triggers:
                for action in trigger.actions:
                    key = f"{trigger.id}.{action.id}"
                    logs[key] = attempts_view(engine, action, key, limit=PAGE_LOG_ROWS)
        html = _templates.get_template("index.html").render(
            page=view, logs=logs, csrf_header=CSRF_HEADER, version=__version__
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        path = (STATIC_DIR / name).resolve()
        kind = STATIC_TYPES.get(path.suffix)
        if kind is None or path.parent != STATIC_DIR or name.startswith(".") or not path.is_file():
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such file")
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "no-cache"})

    @router.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @router.get("/api/triggers", response_model=TriggersOut, summary="Every trigger and action with status")
    def get_triggers() -> TriggersOut:
        return triggers_view()

    @router.get("/api/actions/{ref}/attempts", response_model=AttemptsOut, summary="An action's delivery log")
    def get_attempts(ref: ActionPath, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> AttemptsOut:
        trigger, action = _resolve(ref)
        key = f"{trigger.id}.{action.id}"
        return AttemptsOut(action=key, attempts=attempts_view(_store(), action, key, limit=limit))

    @router.post(
        "/api/actions/{ref}/test",
        response_model=TestExecutionOut,
        dependencies=changes,
        summary="Run a test execution against the real endpoint (a sample lead)",
    )
    def post_test(ref: ActionPath, user: GetUserDep) -> TestExecutionOut:
        trigger, action = _resolve(ref)
        engine = _store()
        log.info("%s.%s: test execution requested by %s", trigger.id, action.id, user.get_name())
        try:
            report = run_test(engine, trigger, action)
        except LeadpostError as exc:  # a broken auth connection: nothing was sent
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            raise HTTPException(status.HTTP_409_CONFLICT, detail=problems) from None
        mask = _param_masker(action)
        data = report.as_dict()
        return TestExecutionOut(
            action=report.action_key,
            ok=report.ok,
            status=report.status,
            http_status=report.http_status,
            message=mask(report.message) or "",
            hint=report.hint,
            request=mask(data["request"]) or "",
            response=mask(data["response"]),
            elapsed_ms=report.elapsed_ms,
            state=action_view(engine, trigger, action),
        )

    @router.post(
        "/api/actions/{ref}/replay",
        response_model=ReplayOut,
        dependencies=changes,
        summary="Put dead letters back to pending",
    )
    def post_replay(
        ref: ActionPath,
        user: GetUserDep,
        status_code: Annotated[int | None, Query(alias="status", ge=100, le=599)] = None,
        lead: Annotated[int | None, Query(ge=0)] = None,
    ) -> ReplayOut:
        trigger, action = _resolve(ref)
        engine = _store()
        key = f"{trigger.id}.{action.id}"
        n = replay_dead_letters(engine, key, status=status_code, lead_id=lead)
        log.info("%s: %d dead letter(s) replayed by %s", key, n, user.get_name())
        return ReplayOut(action=key, replayed=n, state=action_view(engine, trigger, action))

    app.include_router(router)
    return app
