"""``leadpost leads import FILE``: stream a ``.csv`` or ``.jsonl`` file of leads into the store.

Columns (CSV header) or keys (JSON Lines) are the ``leads`` column names plus ``tags`` (a
``;``-separated string, or a JSON list). Every data row ends up *imported* (a new lead),
*updated* (it matched an existing lead) or *rejected* with its line number and a precise
reason; nothing is dropped silently and the three counts add up to the number of data rows.

Rules, in the order a user meets them:

* Rows are matched by ``id`` when the row has one, else by ``email`` (emails are unique).
* Only the columns a row gives are written on an update; absent columns keep their stored
  value. An empty value clears a nullable column (``NULL``); for ``score``, ``status``,
  ``captured_at`` and ``updated_at`` an empty value means "not given" (new leads get
  ``0``, ``active``, now, now). ``tags`` given replace the lead's tags (empty = no tags);
  ``tags`` absent leave them alone.
* ``updated_at`` moves only when something actually changed (a value or the tag set), and
  then always strictly forward, so actions with ``resend_on_update`` see the new version.
  Importing the same file twice therefore reports every row as updated, touches nothing and
  counts them as ``unchanged``.
* Within one chunk, later rows for the same lead win (their values are merged over the
  earlier ones, as if the rows had been applied one after the other).
* An email that another lead already holds is refused on a row that names a different
  ``id``. An email a lead gives up may go to a new lead in the same chunk; to move it to another
  existing ``id`` import that row again (the unique index is checked row by row).

The file is read as a stream in chunks of ``chunk_size`` rows, each chunk written in one
transaction with a handful of statements (a lookup, batched upserts, tag replacement), so
memory stays flat however long the file is. A database error stops the import; the chunks
before it stay committed and importing the file again completes it.

Reading is :mod:`leadpost.store.import_file`, checking a row :mod:`leadpost.store.import_row`,
writing a chunk :mod:`leadpost.store.import_chunk`; this module runs them and counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from sqlalchemy.engine import Engine

from leadpost.exceptions import ImportRowError
from leadpost.store.import_chunk import ImportCounts, write_chunk
from leadpost.store.import_file import IMPORT_COLUMNS, read_records
from leadpost.store.import_row import ParsedRow, parse_row

__all__ = ["IMPORT_COLUMNS", "KEPT_REJECTIONS", "ImportSummary", "import_leads"]

log = logging.getLogger(__name__)

KEPT_REJECTIONS = 1000


@dataclass(frozen=True)
class ImportSummary:
    """What an import did.

    :param imported: rows that created a new lead.
    :param updated: rows that matched an existing lead (including ``unchanged`` ones).
    :param rejected: rows refused; ``imported + updated + rejected`` is the number of data rows.
    :param rejections: the first 1000 rejections, in file order.
    :param unchanged: of ``updated``, rows whose lead already held exactly those values.
    """

    imported: int
    updated: int
    rejected: int
    rejections: list[ImportRowError] = field(default_factory=list)
    unchanged: int = 0

    @property
    def rows(self) -> int:
        """Number of data rows read (blank lines are not rows)."""
        return self.imported + self.updated + self.rejected


def import_leads(
    engine: Engine,
    path: str | PathLike[str],
    *,
    chunk_size: int = 5000,
    on_reject: Callable[[ImportRowError], None] | None = None,
) -> ImportSummary:
    """Upsert the leads of a ``.csv`` or ``.jsonl`` file into the store (see the module docstring).

    :param engine: the lead store.
    :param path: the file; its suffix (``.csv`` or ``.jsonl``) selects the format.
    :param chunk_size: rows read, checked and written per transaction.
    :param on_reject: called with every rejected row as it is found (the summary keeps the first 1000).
    :raises ImportRowError: with ``line`` 1 when the file as a whole is refused (unreadable,
        duplicate or unknown CSV columns, no ``email`` column).
    :raises ValueError: when the suffix is neither ``.csv`` nor ``.jsonl``.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    path = Path(path)
    records = read_records(path)
    counts = ImportCounts()

    def reject(error: ImportRowError) -> None:
        counts.rejected += 1
        if len(counts.rejections) < KEPT_REJECTIONS:
            counts.rejections.append(error)
        log.debug("import %s: rejected %s", path.name, error)
        if on_reject is not None:
            on_reject(error)

    chunk_no = 0

    def write(rows: list[ParsedRow]) -> None:
        nonlocal chunk_no
        chunk_no += 1
        before = (counts.imported, counts.updated, counts.rejected)
        write_chunk(engine, rows, counts=counts, reject=reject)
        log.info(
            "import %s chunk %d: %d rows, %d new, %d updated, %d rejected",
            path.name,
            chunk_no,
            len(rows),
            counts.imported - before[0],
            counts.updated - before[1],
            counts.rejected - before[2],
        )

    chunk: list[ParsedRow] = []
    for line, record in records:
        if isinstance(record, ImportRowError):
            reject(record)
            continue
        try:
            chunk.append(parse_row(line, record))
        except ImportRowError as error:
            reject(error)
            continue
        if len(chunk) >= chunk_size:
            write(chunk)
            chunk = []
    if chunk:
        write(chunk)
    return _summarize(path, counts)


def _summarize(path: Path, counts: ImportCounts) -> ImportSummary:
    summary = ImportSummary(
        imported=counts.imported,
        updated=counts.updated,
        rejected=counts.rejected,
        rejections=counts.rejections,
        unchanged=counts.unchanged,
    )
    log.info(
        "import %s: %d rows, %d new, %d updated (%d unchanged), %d rejected",
        path.name,
        summary.rows,
        summary.imported,
        summary.updated,
        summary.unchanged,
        summary.rejected,
    )
    return summary
