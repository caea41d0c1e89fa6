"""The ``leadpost`` command: validate, db init, leads import/generate, test, status, dead letters, replay."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from leadpost.config import ActionRef, TriggersFile, default_triggers_path, load_triggers
from leadpost.exceptions import ConfigError, LeadpostError

__all__ = ["main"]

STATUS_STYLE = {"active": "green", "untested": "red", "failing": "dark_orange", "disabled": "grey50"}

# Piped output (CI logs, `make demo`) gets a readable width instead of rich's 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _triggers(args: argparse.Namespace) -> TriggersFile:
    return load_triggers(args.triggers or default_triggers_path())


def _engine() -> Any:
    from leadpost.store import get_engine, init_db

    return init_db(get_engine())


# --- verbs ------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    path = Path(args.file or args.triggers or default_triggers_path())
    triggers = load_triggers(path)  # ConfigError is printed by main()
    n_actions = sum(len(t.actions) for t in triggers.triggers)
    out.print(f"[green]OK[/]: {path}: {len(triggers.triggers)} trigger(s), {n_actions} action(s)")
    return 0


def cmd_db_init(args: argparse.Namespace) -> int:
    from leadpost.store import get_engine, init_db

    engine = init_db(get_engine())
    out.print(f"lead store ready: {engine.url.render_as_string(hide_password=True)}")
    return 0


def cmd_leads_import(args: argparse.Namespace) -> int:
    from leadpost.store.importer import import_leads

    def show(rejection: Any) -> None:
        err.print(f"{args.file}: line {rejection.line}: {rejection.reason}", markup=False)

    try:
        summary = import_leads(_engine(), args.file, on_reject=show)
    except ValueError as exc:  # whole file refused (unreadable, bad columns, unknown suffix)
        err.print(f"{args.file}: {exc}", markup=False)
        return 1
    out.print(
        f"{args.file}: {summary.imported} imported, {summary.updated} updated, {summary.rejected} rejected"
    )
    return 1 if summary.rejected else 0


def cmd_leads_generate(args: argparse.Namespace) -> int:
    from leadpost.store.generate import write_leads

    fmt = args.format or ("jsonl" if str(args.out).endswith(".jsonl") else "csv")
    write_leads(args.out, args.n, seed=args.seed, fmt=fmt)
    out.print(f"wrote {args.n} synthetic lead(s) to {args.out}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from leadpost.activation import run_test

    trigger, action = _triggers(args).resolve(args.action)
    report = run_test(_engine(), trigger, action, lead_id=args.lead)
    if args.json:
        out.print_json(json.dumps(report.as_dict()))
    else:
        first, _, rest = report.render().partition("\n")
        out.print(first, style="bold green" if report.ok else "bold red", markup=False)
        out.print(rest, markup=False)
    return 0 if report.ok else 1


def _status_rows(triggers: TriggersFile) -> list[dict[str, Any]]:
    import pendulum

    from leadpost.activation import action_state
    from leadpost.ledger import Selection, count_deliveries

    engine = _engine()
    rows = []
    for trigger in triggers.triggers:
        today = pendulum.now(trigger.timezone).date()
        for action in trigger.actions:
            counts = count_deliveries(engine, Selection(trigger, action, today))
            row = {"action": f"{trigger.id}.{action.id}", "last_test_at": None, "last_test_ok": None}
            try:
                state = action_state(engine, trigger, action)
            except LeadpostError as exc:  # e.g. its auth connection is missing: show it, go on
                row |= {"status": "untested", "reason": str(exc)}
            else:
                row |= {
                    "status": str(state.status),
                    "reason": state.reason,
                    "last_test_at": state.last_test_at.isoformat() if state.last_test_at else None,
                    "last_test_ok": state.last_test_ok,
                }
            rows.append(row | counts.as_dict())
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    rows = _status_rows(_triggers(args))
    if args.json:
        out.print_json(json.dumps(rows))
        return 0
    table = Table(title="leadpost actions")
    for col in ("action", "status", "pending", "in flight", "delivered", "retrying", "dead", "why"):
        table.add_column(
            col,
            justify="right" if col in ("pending", "delivered", "retrying", "dead", "in flight") else "left",
        )
    for r in rows:
        style = STATUS_STYLE.get(r["status"], "")
        table.add_row(
            r["action"],
            f"[{style}]{r['status']}[/]",
            *(str(r[k]) for k in ("pending", "in_flight", "delivered", "retrying", "dead")),
            r["reason"] or "",
        )
    out.print(table)
    return 0


def cmd_deadletters(args: argparse.Namespace) -> int:
    from leadpost.ledger import list_dead_letters

    ref = ActionRef.parse(args.action)
    _triggers(args).resolve(ref)
    letters = list_dead_letters(_engine(), ref.key, limit=args.limit)
    if args.json:
        out.print_json(json.dumps([{**vars(x), "at": x.at.isoformat()} for x in letters] if letters else []))
        return 0
    table = Table(title=f"dead letters of {ref.key}")
    for col in ("lead", "status", "error", "attempts", "when"):
        table.add_column(col)
    for x in letters:
        table.add_row(
            str(x.lead_id), str(x.last_status or "-"), x.last_error or "", str(x.attempts), x.at.isoformat()
        )
    out.print(table)
    if not letters:
        out.print("no dead letters")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from leadpost.ledger import replay_dead_letters

    ref = ActionRef.parse(args.action)
    _triggers(args).resolve(ref)
    n = replay_dead_letters(_engine(), ref.key, status=args.status, lead_id=args.lead)
    out.print(f"{n} dead letter(s) of {ref.key} back to pending; they go out on the next run")
    return 0


def cmd_dispatch(args: argparse.Namespace) -> int:
    """Run an action's dispatch here, outside Airflow (every shard in turn)."""
    import pendulum

    from leadpost.dispatch import dispatch_shard
    from leadpost.ledger import Selection, Shard

    trigger, action = _triggers(args).resolve(args.action)
    sel = Selection(trigger, action, pendulum.now(trigger.timezone).date())
    engine = _engine()
    count = args.shards or 1
    reports = [dispatch_shard(engine, sel, Shard(sel.action_key, i, count)).as_dict() for i in range(count)]
    out.print_json(json.dumps(reports))
    return 0 if all(not r["stopped"] for r in reports) else 1


# --- parser -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leadpost", description="Send leads to HTTP endpoints with Airflow."
    )
    parser.add_argument(
        "--triggers", help="triggers file (default: $LEADPOST_TRIGGERS or dags/triggers.yaml)"
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, fn: Callable[[argparse.Namespace], int], help_: str, parent: Any = verbs) -> Any:
        p = parent.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        return p

    p = verb("validate", cmd_validate, "check a triggers file; print every problem with its place")
    p.add_argument("file", nargs="?")

    db = verbs.add_parser("db", help="lead store database").add_subparsers(dest="db_verb", required=True)
    verb("init", cmd_db_init, "create the lead store tables and indexes (idempotent)", db)

    leads = verbs.add_parser("leads", help="import or generate leads").add_subparsers(
        dest="leads_verb", required=True
    )
    p = verb("import", cmd_leads_import, "upsert leads from a .csv or .jsonl file", leads)
    p.add_argument("file")
    p = verb("generate", cmd_leads_generate, "write N realistic synthetic leads", leads)
    p.add_argument("n", type=int)
    p.add_argument("--out", default="leads.csv")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--format", choices=["csv", "jsonl"])

    p = verb("test", cmd_test, "send one test execution; activate the action on a 2xx")
    p.add_argument("action", metavar="TRIGGER.ACTION")
    p.add_argument("--lead", type=int, help="lead id to send (default: a sample lead)")
    p.add_argument("--json", action="store_true")

    p = verb("status", cmd_status, "every action with its status and counts")
    p.add_argument("--json", action="store_true")

    p = verb("deadletters", cmd_deadletters, "list an action's dead letters")
    p.add_argument("action", metavar="TRIGGER.ACTION")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")

    p = verb("replay", cmd_replay, "put dead letters back to pending")
    p.add_argument("action", metavar="TRIGGER.ACTION")
    p.add_argument("--status", type=int, help="only those whose last HTTP status was CODE")
    p.add_argument("--lead", type=int, help="only this lead")

    p = verb("dispatch", cmd_dispatch, "send an action's pending leads now, outside Airflow")
    p.add_argument("action", metavar="TRIGGER.ACTION")
    p.add_argument("--shards", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False)
        err.print(f"{len(exc.problems)} problem(s) found", markup=False)
        return 1
    except LeadpostError as exc:
        err.print(f"error: {exc}", markup=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
