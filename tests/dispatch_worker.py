"""A dispatcher in its own process, for the crash and concurrent-dispatcher tests.

Runs :func:`leadpost.dispatch.dispatch_shard` for one action of a triggers file against a lead
store given by URL, exactly as a mapped dispatch task would, and prints the shard report as JSON
on stdout. The parent test can SIGKILL it mid-batch, or start two at once behind a barrier::

    python -m tests.dispatch_worker --store URL --triggers FILE --action t.a \
        [--shard 0 --shards 1] [--ready FILE --go FILE]

With ``--ready``/``--go`` the worker writes the ready file once everything is imported and the
hook is built, then waits for the go file: two workers started together then claim at the same
moment instead of one finishing while the other is still importing Airflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["main"]

GO_TIMEOUT_S = 60.0


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"dispatch_worker: {path} did not appear within {timeout:g}s")
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    """Dispatch one shard and print its report (JSON) on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.dispatch_worker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--store", required=True, help="SQLAlchemy URL of the lead store")
    parser.add_argument("--triggers", required=True, type=Path)
    parser.add_argument("--action", required=True, metavar="TRIGGER.ACTION")
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--ready", type=Path, help="touch this file when ready to dispatch")
    parser.add_argument("--go", type=Path, help="wait for this file before dispatching")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")

    from leadpost.config import load_triggers
    from leadpost.dispatch import dispatch_shard
    from leadpost.hook import LeadPostHook
    from leadpost.ledger import Selection, Shard
    from leadpost.store import get_engine

    trigger, action = load_triggers(args.triggers).resolve(args.action)
    sel = Selection(trigger, action, datetime.now(UTC).date())
    engine = get_engine(args.store)
    hook = LeadPostHook(action, action_key=sel.action_key)
    with engine.connect():
        pass  # open the pool now, so the go signal starts claims rather than connections
    if args.ready:
        args.ready.write_text("ready")
    if args.go:
        _wait_for(args.go, GO_TIMEOUT_S)
    report = dispatch_shard(engine, sel, Shard(sel.action_key, args.shard, args.shards), hook=hook)
    print(json.dumps(report.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
