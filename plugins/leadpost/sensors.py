"""``ActionGateSensor``: the first task of every trigger DAG. Only active actions pass."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from leadpost.states import ActionStatus

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["ActionGateSensor"]


class ActionGateSensor(BaseSensorOperator):
    """Pass the trigger's actions that are active for their current configuration.

    It is done as soon as at least one action is active, and returns their keys (XCom) so only
    those are dispatched; the others send nothing and their leads stay pending. With
    ``auto_test: true`` on an action, the gate runs the test execution itself when the action is
    untested or failing. When no action is active it waits (reschedule mode: no worker slot is
    held) until ``timeout``, then skips the run (soft fail) — the next scheduled run checks again.

    :param trigger_id: the trigger whose actions are checked.
    :param triggers_path: the triggers file (default: ``$LEADPOST_TRIGGERS`` / dags folder).
    """

    template_fields: Sequence[str] = ("trigger_id",)
    ui_color = "#fdf2d0"

    def __init__(
        self,
        *,
        trigger_id: str,
        triggers_path: str | None = None,
        mode: str = "reschedule",
        poke_interval: timedelta | float = 60,
        timeout: timedelta | float = 0,
        soft_fail: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            mode=mode, poke_interval=poke_interval, timeout=timeout, soft_fail=soft_fail, **kwargs
        )
        self.trigger_id = trigger_id
        self.triggers_path = triggers_path

    def poke(self, context: Context) -> PokeReturnValue:
        from leadpost.activation import action_state, run_test
        from leadpost.hook import LeadPostHook
        from leadpost.operators import load_config
        from leadpost.store import get_engine

        trigger = load_config(self.triggers_path).trigger(self.trigger_id)
        engine = get_engine()
        active: list[str] = []
        for action in trigger.actions:
            key = f"{trigger.id}.{action.id}"
            try:
                hook = LeadPostHook(action, action_key=key)
                state = action_state(engine, trigger, action, hook=hook)
            except ValueError as exc:  # ConfigError from the auth connection
                raise AirflowFailException(f"{key}: {exc}") from None
            status = state.status
            if action.auto_test and status in (ActionStatus.UNTESTED, ActionStatus.FAILING):
                report = run_test(engine, trigger, action, hook=hook)
                self.log.info(
                    "%s: auto test %s (%s)", key, "passed" if report.ok else "failed", report.message
                )
                status = report.status
            if status is ActionStatus.ACTIVE:
                active.append(key)
            else:
                self.log.warning(
                    "%s is %s (%s): nothing is sent and its leads stay pending; run `leadpost test %s`",
                    key,
                    status,
                    state.reason or "no reason recorded",
                    key,
                )
        return PokeReturnValue(is_done=bool(active), xcom_value=active)
