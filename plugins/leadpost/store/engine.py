"""The lead store's engine: Airflow connection ``leadpost_default`` or ``$AIRFLOW_HOME/leadpost.db``."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from leadpost.store.schema import metadata

__all__ = [
    "STORE_CONN_ID",
    "default_sqlite_path",
    "dialect_insert",
    "get_engine",
    "id_in",
    "init_db",
    "store_url",
    "utcnow",
]

log = logging.getLogger(__name__)

STORE_CONN_ID = "leadpost_default"
_SQLITE_BUSY_TIMEOUT_MS = 30_000
_PG_SCHEMES = {"postgres": "postgresql+psycopg2", "postgresql": "postgresql+psycopg2"}


def utcnow() -> datetime:
    return datetime.now(UTC)


def default_sqlite_path() -> Path:
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home) / "leadpost.db"


def store_url(conn_id: str = STORE_CONN_ID) -> str:
    """SQLAlchemy URL of the lead store: the connection when it exists, else the SQLite default."""
    conn = _find_connection(conn_id)
    if conn is None:
        return f"sqlite:///{default_sqlite_path()}"
    if conn.conn_type == "sqlite":
        return f"sqlite:///{conn.host}"
    uri = conn.get_uri()
    scheme, sep, rest = uri.partition("://")
    return f"{_PG_SCHEMES.get(scheme, scheme)}{sep}{rest}"


def _find_connection(conn_id: str) -> Any:
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


@cache
def _engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000})
        _tune_sqlite(engine)
        return engine
    # values_plus_batch: the ledger's executemany UPDATEs go out in batches, not one round trip per row
    return sa.create_engine(
        url, pool_pre_ping=True, pool_size=4, max_overflow=4, executemany_mode="values_plus_batch"
    )


def get_engine(url: str | None = None) -> Engine:
    """One engine per store URL and process."""
    return _engine_for(url or store_url())


def _tune_sqlite(engine: Engine) -> None:
    """WAL + busy timeout so shards and the CLI can write side by side; BEGIN IMMEDIATE so a
    transaction that will write takes the write lock up front instead of failing on upgrade."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()
        from leadpost.filters import register_sqlite_functions  # filters imports the store: no cycle at load

        register_sqlite_functions(dbapi_conn)

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def init_db(engine: Engine | None = None) -> Engine:
    """Create every table and index that is missing (idempotent)."""
    engine = engine or get_engine()
    if engine.url.get_backend_name() == "sqlite" and engine.url.database:
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    metadata.create_all(engine, checkfirst=True)
    # create_all skips the indexes of tables that already exist: add the ones a newer version brought
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(engine, checkfirst=True)
    return engine


def dialect_insert(dialect_name: str) -> Any:
    """``insert()`` with ``on_conflict_do_update`` for the store's two backends."""
    return postgresql.insert if dialect_name == "postgresql" else sqlite.insert


class _IdArray(sa.types.TypeDecorator[list[int]]):
    """A list of ids bound as one parameter: an integer array on PostgreSQL, JSON text on SQLite."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.ARRAY(sa.Integer))
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        ids = [int(i) for i in value]
        return ids if dialect.name == "postgresql" else json.dumps(ids)


def id_in(
    column: sa.ColumnElement[Any], name: str, dialect_name: str, *, value: list[int] | None = None
) -> sa.ColumnElement[bool]:
    """``column`` is one of the ids of parameter ``name`` (a list: ``value``, or bound at execution).

    One parameter however many ids: the statement compiles once and is cached, where an expanded
    ``IN (…)`` is rewritten for every list length (that rewrite cost more than the write itself).
    """
    ids = (
        sa.bindparam(name, value, type_=_IdArray())
        if value is not None
        else sa.bindparam(name, type_=_IdArray())
    )
    if dialect_name == "postgresql":
        return column == sa.any_(ids)
    each = sa.func.json_each(ids).table_valued("value")
    return column.in_(sa.select(each.c.value))
