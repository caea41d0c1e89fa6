"""``HttpPostOperator`` for hand-made DAGs, and the plan → dispatch → summary steps of trigger DAGs."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pendulum
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from leadpost.config import ActionConfig, ActionRef, TriggerConfig, TriggersFile, load_triggers
from leadpost.exceptions import ConfigError, UnknownActionError
from leadpost.ledger import Selection, Shard, count_deliveries
from leadpost.states import OutcomeKind

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["HttpPostOperator", "load_config", "plan_shards", "run_shard", "summarize"]

log = logging.getLogger(__name__)


def load_config(path: str | None) -> TriggersFile:
    """The triggers file for a running task; invalid config fails the task without retries."""
    from leadpost.config import default_triggers_path

    try:
        return load_triggers(path or default_triggers_path())
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from None


def _trigger(path: str | None, trigger_id: str) -> TriggerConfig:
    try:
        return load_config(path).trigger(trigger_id)
    except UnknownActionError as exc:
        raise AirflowFailException(str(exc)) from None


# --- trigger DAG steps ------------------------------------------------------------------------


def plan_shards(
    triggers_path: str | None, trigger_id: str, active_keys: Sequence[str]
) -> list[dict[str, Any]]:
    """One small descriptor per (active action, shard): the dispatch task's mapped argument."""
    trigger = _trigger(triggers_path, trigger_id)
    today = pendulum.now(trigger.timezone).date().isoformat()  # one day for every shard of the run
    plan = []
    for action in trigger.actions:
        key = f"{trigger.id}.{action.id}"
        if key not in active_keys:
            log.info("%s is not active: sending nothing, its leads stay pending", key)
            continue
        plan += [
            {"action_key": key, "index": i, "count": action.parallelism, "today": today}
            for i in range(action.parallelism)
        ]
    log.info("%s: %d dispatch shard(s) for %d active action(s)", trigger.id, len(plan), len(active_keys))
    return plan


def run_shard(triggers_path: str | None, shard_desc: Mapping[str, Any]) -> dict[str, Any]:
    """Dispatch one shard; return its counts."""
    from leadpost.dispatch import dispatch_shard
    from leadpost.store import get_engine

    ref = ActionRef.parse(shard_desc["action_key"])
    trigger = _trigger(triggers_path, ref.trigger_id)
    action = trigger.action(ref.action_id)
    shard = Shard(shard_desc["action_key"], shard_desc["index"], shard_desc["count"])
    sel = Selection(trigger, action, pendulum.Date.fromisoformat(shard_desc["today"]))
    cap = math.ceil(action.max_leads_per_run / shard.count) if action.max_leads_per_run else None
    report = dispatch_shard(get_engine(), sel, shard, max_leads=cap)
    log.info(
        "%s shard %d/%d: %d claimed, %d delivered, %d retrying, %d dead, %d released in %.1f s",
        shard.action_key,
        shard.index + 1,
        shard.count,
        report.claimed,
        report.delivered,
        report.retrying,
        report.dead,
        report.released,
        report.elapsed_s,
    )
    if report.stopped:
        log.warning("%s shard %d stopped: %s", shard.action_key, shard.index + 1, report.stopped)
    return report.as_dict()


def summarize(
    triggers_path: str | None, trigger_id: str, reports: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Per action: this run's counts and the ledger's totals."""
    from leadpost.store import get_engine

    trigger = _trigger(triggers_path, trigger_id)
    today = pendulum.now(trigger.timezone).date()
    engine = get_engine()
    summary: dict[str, Any] = {}
    for action in trigger.actions:
        key = f"{trigger.id}.{action.id}"
        mine = [r for r in reports or [] if r["action_key"] == key]
        run = {f: sum(r[f] for r in mine) for f in ("claimed", "delivered", "retrying", "dead", "released")}
        totals = count_deliveries(engine, Selection(trigger, action, today)).as_dict()
        stopped = sorted({r["stopped"] for r in mine if r.get("stopped")})
        summary[key] = {"run": run, "totals": totals, "stopped": stopped}
        log.info("%s: this run %s; totals %s%s", key, run, totals, f"; stopped: {stopped}" if stopped else "")
    return summary


# --- the operator -----------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "x"


class HttpPostOperator(BaseOperator):
    """Send leads through one HttpPost action, without a triggers file.

    Given lead **ids**, the leads are read from the lead store and go through the delivery ledger
    under ``action_key``: each (action, lead) is delivered once, re-runs send nothing new, and
    failures are retried by later runs. Given lead **dicts**, they are sent as they are (no
    ledger); the task fails when any was not delivered so Airflow's retries can take over (every
    request carries the same ``Idempotency-Key`` each time).

    :param action: the action, as an :class:`~leadpost.config.ActionConfig` or the same keys as
        in the triggers file (``link`` or ``url``/``params``/``fields``, ``method``, ``body``…).
    :param leads: lead ids, or lead dicts (keys: ``id`` and lead fields). Templated.
    :param action_key: ledger key (default ``<dag_id>.<task_id>``).
    :param require_active: send only when a test execution activated ``action_key``.
    """

    template_fields = ("leads",)

    def __init__(
        self,
        *,
        action: ActionConfig | Mapping[str, Any],
        leads: Sequence[int] | Sequence[Mapping[str, Any]] | str,
        action_key: str | None = None,
        require_active: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        try:
            self.action = (
                action if isinstance(action, ActionConfig) else ActionConfig.model_validate(dict(action))
            )
        except ValueError as exc:
            raise ConfigError([f"{self.task_id}.action: {exc}"]) from None
        self.leads = leads
        self.action_key = action_key
        self.require_active = require_active

    def execute(self, context: Context) -> dict[str, Any]:
        from leadpost.hook import LeadPostHook

        key = self.action_key or f"{_slug(self.dag_id)}.{_slug(self.task_id)}"
        hook = LeadPostHook(self.action, action_key=key)
        leads = list(self.leads or [])
        if all(isinstance(lead, int) for lead in leads):
            return self._send_ids(hook, key, [int(x) for x in leads])
        if all(isinstance(lead, Mapping) for lead in leads):
            return self._send_dicts(hook, [dict(x) for x in leads])
        raise AirflowFailException("leads must be all ids or all dicts")

    def _send_ids(self, hook: Any, key: str, ids: list[int]) -> dict[str, Any]:
        from leadpost.dispatch import dispatch_shard
        from leadpost.store import get_engine

        ref = ActionRef.parse(key)
        trigger = TriggerConfig(
            id=ref.trigger_id, actions=(self.action.model_copy(update={"id": ref.action_id}),)
        )
        sel = Selection(trigger, trigger.actions[0], pendulum.today("UTC").date())
        report = dispatch_shard(
            get_engine(), sel, Shard(key), hook=hook, lead_ids=ids, require_active=self.require_active
        )
        self.log.info(
            "%s: %d of %d lead ids delivered (%s)", key, report.delivered, len(ids), report.as_dict()
        )
        if report.stopped:
            raise AirflowException(f"{key} stopped: {report.stopped}")
        return report.as_dict()

    def _send_dicts(self, hook: Any, leads: list[dict[str, Any]]) -> dict[str, Any]:
        from leadpost.dispatch import Breaker, Feed, RateLimiter, ShardReport, send_leads

        async def run() -> tuple[list[Any], int]:
            feed = Feed.of(leads, report=ShardReport(hook.action_key))
            async with hook.async_client(self.action.concurrency) as client:
                results = await send_leads(
                    client,
                    hook,
                    feed,
                    concurrency=self.action.concurrency,
                    limiter=RateLimiter(self.action.rate_limit_per_s),
                    breaker=Breaker(),
                    deadline=float("inf"),
                )
            unsent = await feed.close()
            return results, sum(len(ids) for ids in unsent.values())

        results, unsent = asyncio.run(run())
        counts = {kind.value: 0 for kind in OutcomeKind} | {"unsent": unsent}
        for _lead_id, outcome, _tries in results:
            counts[outcome.kind.value] += 1
        self.log.info("sent %d lead(s): %s", len(leads), counts)
        if counts[OutcomeKind.DELIVERED.value] != len(leads):
            raise AirflowException(
                f"{len(leads) - counts['delivered']} of {len(leads)} lead(s) not delivered: {counts}"
            )
        return counts
