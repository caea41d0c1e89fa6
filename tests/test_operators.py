"""HttpPostOperator in a hand-made DAG, run with dag.test() against the real receiver."""

from __future__ import annotations

import textwrap

from leadpost.ledger import count_deliveries
from tests.leads import add_leads, selection


def _dag(tmp_path, monkeypatch, receiver_url: str, leads, extra: str = ""):
    """Write the DAG as a user would (a file in the DAGs folder) and load it with a DagBag."""
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path / "dags"
    folder.mkdir(exist_ok=True)
    (folder / "custom_leads.py").write_text(
        textwrap.dedent(
            f"""
            # an Airflow DAG sending leads with leadpost
            import pendulum
            from airflow.sdk import DAG
            from leadpost import HttpPostOperator

            with DAG("custom_leads", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False):
                HttpPostOperator(
                    task_id="send",
                    action={{"id": "crm", "url": "{receiver_url}/in", "body": "json",
                             "fields": {{"email": "e", "name": "n"}}}},
                    leads={leads!r},
                    {extra}
                )
            """
        )
    )
    from airflow import settings

    # dag.test() syncs the DAGs-folder bundle and runs the DAG found there
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
    monkeypatch.setattr(settings, "DAGS_FOLDER", str(folder))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    return bag.get_dag("custom_leads")


def test_lead_dicts_are_sent_as_json(airflow_db, receiver, tmp_path, monkeypatch):
    leads = [{"id": 1, "email": "a@x.com", "name": "Ana Conceição"}, {"id": 2, "email": "b@x.com"}]
    run = _dag(tmp_path, monkeypatch, receiver.url, leads).test()
    assert run.state == "success"
    bodies = sorted((r.json() for r in receiver.requests), key=lambda b: b["e"])
    assert bodies == [{"e": "a@x.com", "n": "Ana Conceição"}, {"e": "b@x.com"}]


def test_a_lead_dict_that_is_refused_fails_the_task(airflow_db, receiver, tmp_path, monkeypatch):
    receiver.set_mode("404")
    run = _dag(tmp_path, monkeypatch, receiver.url, [{"id": 1, "email": "a@x.com"}]).test()
    assert run.state == "failed"


def test_lead_ids_go_through_the_ledger_once(airflow_db, sqlite_store, receiver, tmp_path, monkeypatch):
    add_leads(sqlite_store, 5)
    dag = _dag(tmp_path, monkeypatch, receiver.url, [1, 2, 3], extra='action_key="custom.crm",')
    assert dag.test().state == "success"
    assert dag.test().state == "success"  # re-run: nothing new
    assert sorted(r.json()["e"] for r in receiver.requests) == [f"lead{i}@example.com" for i in (1, 2, 3)]
    sel = selection(receiver.url + "/in", trigger="custom", action="crm")
    assert count_deliveries(sqlite_store, sel).delivered == 3
