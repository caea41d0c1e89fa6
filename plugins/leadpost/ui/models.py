"""The JSON shapes of the Leadpost page's API: frozen pydantic models, one per response or part.

They are also the page's view model: the template renders a :class:`TriggersOut` and the
:class:`AttemptOut` rows of each action.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from leadpost.states import ActionStatus, DeliveryState

__all__ = [
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
]


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
