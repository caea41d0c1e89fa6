"""Action status and the delivery ledger: claim before send, record after.

Each (action, lead) has at most one row in ``leadpost_deliveries``. A lead is *claimable* for an
action when it matches the trigger's filters and its row is absent, ``pending``, ``retrying`` and
due, ``in_flight`` with an expired claim (its dispatcher died), or — with ``resend_on_update`` —
``delivered`` for an older lead version.

Claiming is one ``INSERT … ON CONFLICT DO UPDATE … WHERE <claimable> RETURNING lead_id``: the
database decides, row by row, who owns a lead. On PostgreSQL the candidate leads are first
selected ``FOR NO KEY UPDATE SKIP LOCKED`` so concurrent claimers take different leads instead
of queueing; a claimer that still meets a rival's row blocks on it, re-checks the WHERE against
the committed state and gets nothing back. On SQLite the write transaction (``BEGIN IMMEDIATE``)
serialises claimers. Either way a lead is never owned twice.
Outcomes are recorded only where the row still carries the claimer's token, so a dispatcher
whose claim expired cannot overwrite the one that took over.
"""

from __future__ import annotations

from leadpost.ledger.claims import (
    DEFAULT_CLAIM_TTL_S,
    claim_batch,
    claim_ttl,
    record_outcomes,
    release_claims,
)
from leadpost.ledger.floors import ShardWalk
from leadpost.ledger.reports import (
    Counts,
    DeadLetter,
    count_deliveries,
    list_dead_letters,
    list_recent_attempts,
    replay_dead_letters,
)
from leadpost.ledger.selection import LEAD_COLUMNS, Floor, Selection, Shard, pending_select
from leadpost.ledger.status import ActionState, get_action_state, read_status, record_test, set_action_status

__all__ = [
    "DEFAULT_CLAIM_TTL_S",
    "LEAD_COLUMNS",
    "ActionState",
    "Counts",
    "DeadLetter",
    "Floor",
    "Selection",
    "Shard",
    "ShardWalk",
    "claim_batch",
    "claim_ttl",
    "count_deliveries",
    "get_action_state",
    "list_dead_letters",
    "list_recent_attempts",
    "pending_select",
    "read_status",
    "record_outcomes",
    "record_test",
    "release_claims",
    "replay_dead_letters",
    "set_action_status",
]
