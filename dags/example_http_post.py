"""Example Airflow DAG: HttpPostOperator in a hand-made DAG, without a triggers file.

Any task can produce lead ids (from the lead store) or lead dicts; HttpPostOperator sends them
through one HttpPost action with bounded concurrency. With ids, the delivery ledger makes every
(action, lead) go out once, however often the DAG is re-run.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from leadpost.operators import HttpPostOperator

CRM = {
    "id": "crm",
    "url": "https://crm.example.com/api/leads",
    "method": "POST",
    "body": "json",
    "params": {"source": "airflow"},
    "fields": {"email": "email", "name": "full_name", "phone": "phone"},
    "auth_conn_id": "crm_auth",  # an Airflow connection of type leadpost (Key / Value / Auth mode)
    "concurrency": 16,
}


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["leadpost", "example"],
)
def example_http_post():
    @task
    def hot_leads() -> list[int]:
        """Pick lead ids with any query you like; only ids travel through XCom."""
        import sqlalchemy as sa

        from leadpost.store import get_engine, leads

        query = sa.select(leads.c.id).where(leads.c.score >= 80, leads.c.status == "active").limit(1000)
        with get_engine().connect() as conn:
            return list(conn.execute(query).scalars())

    HttpPostOperator(task_id="send_to_crm", action=CRM, leads=hot_leads(), action_key="example.crm")


example_http_post()
