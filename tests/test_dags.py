"""Trigger DAGs for real: DagBag import, structure, and dag.test() runs against the receiver."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from leadpost.dag_factory import TEST_DAG_ID, build_dags
from leadpost.ledger import Selection, count_deliveries
from leadpost.operators import load_config
from tests.conftest import REPO
from tests.leads import T0, add_leads, tag


def _write_triggers(path: Path, url: str, *, extra: str = "") -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            triggers:
              - id: vip
                schedule: "*/15 * * * *"
                filters: {{tags_any: [vip]}}
                actions:
                  - id: crm
                    link: "{url}/meupost?token=0132456789&email={{email}}"
                    parallelism: 3
                    batch_size: 20
                    {extra}
            """
        )
    )
    return path


def _run(dag):
    from airflow.utils.state import DagRunState

    run = dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    return run.state == DagRunState.SUCCESS, states


def _last_run_tis(dag, task_id):
    from airflow.models import DagRun

    run = DagRun.find(dag_id=dag.dag_id)[-1]
    return [ti for ti in run.get_task_instances() if ti.task_id == task_id]


def test_a_trigger_pool_is_used_by_its_dispatch_tasks(tmp_path):
    path = _write_triggers(tmp_path / "triggers.yaml", "https://crm.example.com")
    path.write_text(path.read_text().replace("    schedule:", "    pool: crm\n    schedule:", 1))
    dag = build_dags(path)["leadpost_vip"]
    assert dag.get_task("dispatch").pool == "crm"
    assert dag.get_task("gate").pool == "default_pool"


def test_the_dags_folder_imports_without_errors(airflow_db, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("LEADPOST_TRIGGERS", str(REPO / "dags" / "triggers.yaml"))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert {"leadpost_vip_sp", "leadpost_birthdays", TEST_DAG_ID} <= set(bag.dag_ids)
    dag = bag.get_dag("leadpost_vip_sp")
    assert dag.max_active_runs == 1 and not dag.catchup and "leadpost" in dag.tags
    assert [t.task_id for t in dag.topological_sort()] == ["gate", "plan", "dispatch", "summary"]


def test_a_broken_triggers_file_is_an_import_error_that_names_the_problem(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    bad = tmp_path / "triggers.yaml"
    bad.write_text(
        "triggers:\n  - id: x\n    actions:\n      - {id: a, url: 'https://x.com', fields: {emial: e}}\n"
    )
    monkeypatch.setenv("LEADPOST_TRIGGERS", str(bad))
    bag = DagBag(dag_folder=str(REPO / "dags" / "leadpost_dags.py"))
    assert not any(d.startswith("leadpost_x") for d in bag.dag_ids)
    (error,) = bag.import_errors.values()
    assert "triggers[0].actions[0].fields.emial: unknown lead field 'emial'" in error


def test_untested_action_sends_nothing_then_everything_once_after_the_test(
    airflow_db, store, receiver, tmp_path, monkeypatch
):
    path = _write_triggers(tmp_path / "triggers.yaml", receiver.url)
    monkeypatch.setenv("LEADPOST_TRIGGERS", str(path))
    add_leads(store, 70)
    tag(store, range(1, 61), "vip")  # 60 match, 10 do not
    dags = build_dags(path)
    dag = dags["leadpost_vip"]

    ok, states = _run(dag)
    assert states["gate"] == "skipped" and states["dispatch"] == "skipped"
    assert receiver.requests == []

    ok, states = _run(dags[TEST_DAG_ID])
    assert ok, states
    assert len(receiver.requests) == 1 and receiver.requests[0].form()["email"] == "teste@leadpost.dev"
    receiver.reset()

    ok, states = _run(dag)
    assert ok, states
    emails = sorted(r.form()["email"] for r in receiver.requests)
    assert emails == sorted(f"lead{i}@example.com" for i in range(1, 61))
    assert all(r.form()["token"] == "0132456789" for r in receiver.requests)

    assert {ti.rendered_map_index for ti in _last_run_tis(dag, "dispatch")} == {
        "vip.crm 1/3",
        "vip.crm 2/3",
        "vip.crm 3/3",
    }

    ok, _ = _run(dag)  # a second run sends nothing new
    assert ok and len(receiver.requests) == 60
    trigger = load_config(str(path)).trigger("vip")
    counts = count_deliveries(store, Selection(trigger, trigger.actions[0], T0.date()))
    assert (counts.delivered, counts.pending) == (60, 0)


def test_a_config_change_gates_the_action_again(airflow_db, store, receiver, tmp_path, monkeypatch):
    path = _write_triggers(tmp_path / "triggers.yaml", receiver.url)
    monkeypatch.setenv("LEADPOST_TRIGGERS", str(path))
    add_leads(store, 5)
    tag(store, range(1, 6), "vip")
    ok, _ = _run(build_dags(path)[TEST_DAG_ID])
    assert ok
    _write_triggers(path, receiver.url, extra="body: json")
    receiver.reset()
    ok, states = _run(build_dags(path)["leadpost_vip"])
    assert states["gate"] == "skipped" and receiver.requests == []


def test_auto_test_lets_the_gate_activate_the_action(airflow_db, store, receiver, tmp_path, monkeypatch):
    path = _write_triggers(tmp_path / "triggers.yaml", receiver.url, extra="auto_test: true")
    monkeypatch.setenv("LEADPOST_TRIGGERS", str(path))
    add_leads(store, 4)
    tag(store, range(1, 5), "vip")
    ok, states = _run(build_dags(path)["leadpost_vip"])
    assert ok, states
    assert len(receiver.requests) == 1 + 4  # the test execution, then the leads


def test_a_failing_test_execution_fails_the_test_dag_with_a_hint(
    airflow_db, store, receiver, tmp_path, monkeypatch
):
    path = _write_triggers(tmp_path / "triggers.yaml", receiver.url)
    monkeypatch.setenv("LEADPOST_TRIGGERS", str(path))
    receiver.set_mode("404")
    ok, states = _run(build_dags(path)[TEST_DAG_ID])
    assert not ok and states["test_execution"] == "failed"


@pytest.mark.parametrize("n_leads", [0])
def test_a_trigger_with_no_matching_leads_succeeds_quietly(
    airflow_db, store, receiver, tmp_path, monkeypatch, n_leads
):
    path = _write_triggers(tmp_path / "triggers.yaml", receiver.url, extra="auto_test: true")
    monkeypatch.setenv("LEADPOST_TRIGGERS", str(path))
    ok, states = _run(build_dags(path)["leadpost_vip"])
    assert ok and states["summary"] == "success"
