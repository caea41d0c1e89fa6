"""The Leadpost page and its JSON API, mounted by :mod:`leadpost.ui.plugin` at ``/leadpost``.

Routes (all need an Airflow user allowed to view plugins; no token → 401, bad token → 403):

* ``GET /`` — the page (server-rendered HTML, a little vanilla JS, no build step).
* ``GET /api/triggers`` — everything the page shows.
* ``GET /api/actions/{TRIGGER.ACTION}/attempts`` — the action's delivery log.
* ``POST /api/actions/{TRIGGER.ACTION}/test`` — one test execution against the real endpoint.
* ``POST /api/actions/{TRIGGER.ACTION}/replay`` — dead letters back to pending (``status``, ``lead``).
* ``GET /openapi.json``, ``GET /static/{file}``.

The POST routes also need run permission on the trigger's DAG and the header
``X-Leadpost-CSRF: 1`` (:mod:`leadpost.ui.security`). What the responses show is built by
:mod:`leadpost.ui.views` into the models of :mod:`leadpost.ui.models`, with secrets and lead
values masked by :mod:`leadpost.ui.masking`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_view
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from leadpost import __version__
from leadpost.activation import run_test
from leadpost.config import ActionConfig, ActionRef, TriggerConfig, TriggersFile
from leadpost.exceptions import ConfigError, LeadpostError, UnknownActionError
from leadpost.ledger import replay_dead_letters
from leadpost.ui.masking import param_masker
from leadpost.ui.models import AttemptOut, AttemptsOut, ReplayOut, TestExecutionOut, TriggersOut
from leadpost.ui.security import CSRF_HEADER, require_run_permission, require_same_origin
from leadpost.ui.views import (
    action_view,
    attempts_view,
    load_triggers_file,
    store_engine,
    store_or_error,
    triggers_view,
)

__all__ = ["create_app"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
PAGE_LOG_ROWS = 10


# --- what routes need, or an HTTP error ---------------------------------------------------------


def _loaded() -> TriggersFile:
    triggers, problems = load_triggers_file()
    if triggers is None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=["the triggers file is invalid", *problems])
    return triggers


def _resolve(ref: str) -> tuple[TriggerConfig, ActionConfig]:
    try:
        return _loaded().resolve(ActionRef.parse(ref))
    except UnknownActionError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None


def _store() -> sa.Engine:
    """The lead store for routes that cannot work without it (503 with the reason otherwise)."""
    engine, error = store_or_error()
    if engine is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=error)
    return engine


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
        triggers, problems = load_triggers_file()
        view = triggers_view((triggers, problems))
        logs: dict[str, list[AttemptOut]] = {}
        if triggers is not None and view.store_error is None:
            engine = store_engine()
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
        mask = param_masker(action)
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
