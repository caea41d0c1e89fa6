"""Build one Airflow DAG per trigger, plus the manual ``leadpost_test_action`` DAG.

Parsing reads the triggers file and nothing else: no database, connection or network access, so
the dag-processor stays fast. A file that fails validation raises :class:`ConfigError`, which
Airflow shows as an import error carrying every message; no DAG of that file sends anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from leadpost.config import TriggerConfig, TriggersFile, default_triggers_path, load_triggers
from leadpost.operators import plan_shards, run_shard, summarize
from leadpost.sensors import ActionGateSensor

__all__ = ["TEST_DAG_ID", "build_dags", "build_test_dag", "build_trigger_dag"]

TEST_DAG_ID = "leadpost_test_action"
START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")


def build_dags(path: str | os.PathLike[str] | None = None) -> dict[str, DAG]:
    """``{dag_id: DAG}`` for every trigger in the file, plus :data:`TEST_DAG_ID`."""
    path = Path(path) if path else default_triggers_path()
    triggers = load_triggers(path)
    dags = {t.dag_id: build_trigger_dag(t, triggers_path=str(path)) for t in triggers.triggers}
    dags[TEST_DAG_ID] = build_test_dag(triggers, triggers_path=str(path))
    return dags


def _describe(trigger: TriggerConfig) -> str:
    filters = trigger.filters.model_dump(exclude_defaults=True, mode="json") or "every active lead"
    actions = "\n".join(f"- `{trigger.id}.{a.id}`: {a.method} {a.url}" for a in trigger.actions)
    return f"### leadpost trigger `{trigger.id}`\n\nFilters: `{filters}`\n\nActions:\n{actions}\n"


def build_trigger_dag(trigger: TriggerConfig, *, triggers_path: str) -> DAG:
    """gate → plan → dispatch (mapped, one task per shard) → summary."""
    pool = {"pool": trigger.pool} if trigger.pool else {}
    with DAG(
        dag_id=trigger.dag_id,
        schedule=trigger.schedule,
        start_date=START_DATE.in_timezone(trigger.timezone),
        catchup=False,
        max_active_runs=1,
        tags=["leadpost"],
        doc_md=_describe(trigger),
        default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=30)},
    ) as dag:
        gate = ActionGateSensor(task_id="gate", trigger_id=trigger.id, triggers_path=triggers_path)
        plan = task(task_id="plan")(plan_shards)(triggers_path, trigger.id, gate.output)
        dispatch = (
            task(task_id="dispatch", map_index_template="{{ shard_label }}", **pool)(_dispatch_task)
            .partial(triggers_path=triggers_path)
            .expand(shard_desc=plan)
        )
        task(task_id="summary")(summarize)(triggers_path, trigger.id, dispatch)
    return dag


def _dispatch_task(triggers_path: str, shard_desc: dict[str, Any]) -> dict[str, Any]:
    """One mapped dispatch task; the UI lists it as ``vip_sp.crm 2/4``."""
    from airflow.sdk import get_current_context

    label = f"{shard_desc['action_key']} {shard_desc['index'] + 1}/{shard_desc['count']}"
    get_current_context()["shard_label"] = label  # type: ignore[typeddict-unknown-key]
    return run_shard(triggers_path, shard_desc)


def _run_test_task(triggers_path: str, action: str, lead: int | None = None) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    from leadpost.activation import run_test
    from leadpost.exceptions import LeadpostError
    from leadpost.operators import load_config
    from leadpost.store import get_engine, init_db

    try:
        trigger, act = load_config(triggers_path).resolve(action)
        report = run_test(init_db(get_engine()), trigger, act, lead_id=lead)
    except LeadpostError as exc:
        raise AirflowFailException(str(exc)) from None
    print(report.render())  # the task log shows the request (secrets masked) and the response
    if not report.ok:
        raise AirflowFailException(
            f"{report.action_key}: test execution failed: {report.message}. {report.hint}"
        )
    return {"action": report.action_key, "status": str(report.status), "http_status": report.http_status}


def build_test_dag(triggers: TriggersFile, *, triggers_path: str) -> DAG:
    """Manual DAG running one test execution (params ``action`` and optional ``lead``)."""
    refs = [str(r) for r in triggers.action_refs()]
    action_param = Param(
        refs[0] if refs else "",
        type="string",
        enum=refs or [""],
        description="TRIGGER.ACTION to test",
    )
    with DAG(
        dag_id=TEST_DAG_ID,
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        tags=["leadpost"],
        render_template_as_native_obj=True,  # `lead` stays an int (or None), not the text "None"
        params={
            "action": action_param,
            "lead": Param(
                None, type=["null", "integer"], description="lead id to send (default: a sample lead)"
            ),
        },
        doc_md="Run a **test execution** of one action against its real endpoint. A 2xx activates it.",
    ) as dag:
        task(task_id="test_execution")(_run_test_task)(
            triggers_path, "{{ params.action }}", "{{ params.lead }}"
        )
    return dag
