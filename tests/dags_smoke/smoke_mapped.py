"""A four-way mapped DAG that proves the CeleryExecutor stack: shards spread over the workers.

Each shard sleeps a little so that all four are queued before any finishes: with two workers of
concurrency 2, that forces both workers to take shards.
"""

from __future__ import annotations

import time

from airflow.sdk import dag, get_current_context, task

__all__ = ["SHARDS", "SMOKE_DAG_ID"]

SMOKE_DAG_ID = "leadpost_smoke_mapped"
SHARDS = 4
_SHARD_SECONDS = 3


@dag(dag_id=SMOKE_DAG_ID, schedule=None, catchup=False, tags=["leadpost", "smoke"])
def smoke_mapped() -> None:
    @task
    def plan() -> list[int]:
        return list(range(SHARDS))

    @task
    def shard(index: int) -> str:
        time.sleep(_SHARD_SECONDS)
        # The worker's node name (the stack's hostname_callable), so the run shows who ran what.
        return get_current_context()["ti"].hostname or ""

    @task
    def summary(hostnames: list[str]) -> int:
        if len(hostnames) != SHARDS:
            raise ValueError(f"expected {SHARDS} shard results, got {len(hostnames)}")
        return len(set(hostnames))

    summary(shard.expand(index=plan()))


smoke_mapped()
