"""HttpPostOperator in a hand-made DAG, run with dag.test() against the real receiver."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from leadpost.ledger import count_deliveries
from leadpost.operators import HttpPostOperator
from tests.leads import add_leads, selection


def _dag(receiver_url: str, leads, **kwargs) -> DAG:
    with DAG("custom_leads", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False) as dag:
        HttpPostOperator(
            task_id="send",
            action={
                "id": "crm",
                "url": receiver_url + "/in",
                "body": "json",
                "fields": {"email": "e", "name": "n"},
            },
            leads=leads,
            **kwargs,
        )
    return dag


def test_lead_dicts_are_sent_as_json(airflow_db, receiver):
    dag = _dag(
        receiver.url, [{"id": 1, "email": "a@x.com", "name": "Ana Conceição"}, {"id": 2, "email": "b@x.com"}]
    )
    run = dag.test()
    assert run.state == "success"
    bodies = sorted((r.json() for r in receiver.requests), key=lambda b: b["e"])
    assert bodies == [{"e": "a@x.com", "n": "Ana Conceição"}, {"e": "b@x.com"}]


def test_a_lead_dict_that_is_refused_fails_the_task(airflow_db, receiver):
    receiver.set_mode("404")
    run = _dag(receiver.url, [{"id": 1, "email": "a@x.com"}]).test()
    assert run.state == "failed"


def test_lead_ids_go_through_the_ledger_once(airflow_db, sqlite_store, receiver):
    add_leads(sqlite_store, 5)
    dag = _dag(receiver.url, [1, 2, 3], action_key="custom.crm")
    assert dag.test().state == "success"
    assert dag.test().state == "success"  # re-run: nothing new
    assert sorted(r.json()["e"] for r in receiver.requests) == [f"lead{i}@example.com" for i in (1, 2, 3)]
    sel = selection(receiver.url + "/in", trigger="custom", action="crm")
    assert count_deliveries(sqlite_store, sel).delivered == 3
