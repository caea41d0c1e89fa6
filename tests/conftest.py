"""Shared fixtures: an isolated AIRFLOW_HOME, a real HTTP receiver, and the lead store on SQLite
and on the real local PostgreSQL."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

# Airflow reads its home at import time: settle it before anything imports airflow.
REPO = Path(__file__).resolve().parents[1]
_HOME = Path(tempfile.mkdtemp(prefix="leadpost-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(_HOME / "plugins")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME / 'airflow.db'}"
# Tests only ever talk to the loopback receiver; the SSRF guard must let exactly that through.
os.environ["AIRFLOW__LEADPOST__ALLOWED_NETWORKS"] = "127.0.0.1/32,::1/128"
os.environ.pop("AIRFLOW_CONN_LEADPOST_DEFAULT", None)
os.environ.setdefault("LEADPOST_TRIGGERS", str(REPO / "dags" / "triggers.yaml"))

import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402

PG_ADMIN_URL = os.environ.get("LEADPOST_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


# --- HTTP receiver ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _receiver_server():
    from tests.receiver import start_receiver

    server = start_receiver()
    yield server
    server.stop()


@pytest.fixture
def receiver(_receiver_server):
    """A real HTTP server on 127.0.0.1 recording every request; reset for each test."""
    _receiver_server.reset()
    return _receiver_server


# --- Airflow metadata DB ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata DB in the test AIRFLOW_HOME (for dag.test and connections)."""
    from airflow.utils import db

    db.initdb()
    return _HOME


# --- lead store -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _pg_database() -> Iterator[str]:
    """One throw-away PostgreSQL database for the whole run, dropped at the end."""
    name = f"leadpost_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required for the postgres store tests: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    from leadpost.store.engine import get_engine

    get_engine(url).dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _connection_env(url: str) -> str:
    if url.startswith("sqlite"):
        return json.dumps({"conn_type": "sqlite", "host": url.removeprefix("sqlite:///")})
    return url.replace("postgresql+psycopg2://", "postgresql://")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path, monkeypatch):
    """The lead store, empty and initialised, on SQLite (file in tmp_path) and on PostgreSQL.

    ``leadpost_default`` points at it, so code that finds the store itself uses the same one.
    """
    from leadpost.store import get_engine, init_db, metadata

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'leadpost.db'}"
    else:
        url = request.getfixturevalue("_pg_database")
    engine = init_db(get_engine(url))
    if request.param == "postgres":
        with engine.begin() as conn:
            names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
            conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    monkeypatch.setenv("AIRFLOW_CONN_LEADPOST_DEFAULT", _connection_env(url))
    return engine


@pytest.fixture
def sqlite_store(tmp_path, monkeypatch):
    """The lead store on SQLite only (for tests whose subject is not the backend)."""
    from leadpost.store import get_engine, init_db

    url = f"sqlite:///{tmp_path / 'leadpost.db'}"
    engine = init_db(get_engine(url))
    monkeypatch.setenv("AIRFLOW_CONN_LEADPOST_DEFAULT", _connection_env(url))
    return engine
