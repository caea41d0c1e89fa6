"""Who may change state through the Leadpost page: run permission and same-origin requests.

Every route needs an Airflow user allowed to view plugins (the router's dependency in
:mod:`leadpost.ui.api`). The two POST routes, test execution and replay, change state, so they
also need permission to trigger runs of the trigger's DAG (:func:`require_run_permission`), and
protection against cross-site requests (:func:`require_same_origin`): they require the header
``X-Leadpost-CSRF: 1``. A cross-site HTML form cannot set a custom header, and a cross-site
``fetch`` that sets one needs a CORS preflight the api-server does not grant; browsers that send
``Sec-Fetch-Site`` must also say ``same-origin``. Scripts using a bearer token send the header too.
"""

from __future__ import annotations

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import HTTPException, Request, status

from leadpost.config import ActionRef
from leadpost.exceptions import UnknownActionError

__all__ = ["CSRF_HEADER", "require_run_permission", "require_same_origin"]

CSRF_HEADER = "X-Leadpost-CSRF"


def require_run_permission(request: Request, user: GetUserDep) -> None:
    """Test execution and replay act like triggering the trigger's DAG: they need that permission.

    :param request: the incoming request (its ``ref`` path parameter names the action).
    :param user: the logged-in Airflow user.
    """
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
    """Refuse cross-site requests to state-changing routes (see the module docstring).

    :param request: the incoming request.
    """
    if request.headers.get(CSRF_HEADER) != "1":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"missing header {CSRF_HEADER}: 1 (required on every POST)"
        )
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"cross-site request refused ({site})")
