"""The lead import file: its two formats and allowed columns, read as a stream of numbered records.

A ``.csv`` file names its columns on the first line; a ``.jsonl`` file holds one JSON object per
line. Either way the columns are the ``leads`` column names plus ``tags``. Reading yields one
``(line, record)`` per data row, or ``(line, ImportRowError)`` when the row cannot even be read,
so the importer can reject that row and go on; only a file that is unusable as a whole (no or bad
header) raises.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from leadpost.exceptions import ImportRowError
from leadpost.store.schema import leads

__all__ = ["IMPORT_COLUMNS", "LEAD_COLUMNS", "NOT_UTF8_RE", "Record", "read_records"]

LEAD_COLUMNS = tuple(c.name for c in leads.columns)
IMPORT_COLUMNS = (*LEAD_COLUMNS, "tags")
# Undecodable bytes (kept by surrogateescape) or bad JSON escapes: the text is not UTF-8.
NOT_UTF8_RE = re.compile(r"[\ud800-\udfff]")
_UTF8_BOM = codecs.BOM_UTF8

# (line, {column: value}) for a readable row, (line, error) for one that is not.
Record = tuple[int, Mapping[str, Any] | ImportRowError]


def read_records(path: Path) -> Iterator[Record]:
    """The data rows of ``path``, read lazily; the suffix (``.csv`` or ``.jsonl``) selects the format.

    :param path: the file.
    :raises ValueError: at once, when the suffix is neither ``.csv`` nor ``.jsonl``.
    :raises ImportRowError: while reading, with ``line`` 1, when the CSV header is refused.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".jsonl":
        return _read_jsonl(path)
    raise ValueError(f"{path.name}: unsupported file type {suffix or '(none)'!r}; use .csv or .jsonl")


def _read_csv(path: Path) -> Iterator[Record]:
    """Yield ``(line, {column: text})`` or ``(line, error)`` per data row; line = first physical line."""
    # surrogateescape keeps undecodable bytes visible, so one bad row is rejected, not the file.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ImportRowError(1, "the file is empty; the first line must name the columns") from None
        except csv.Error as exc:
            raise ImportRowError(1, f"the header is not readable CSV: {exc}") from None
        columns = _check_header(header)
        previous = reader.line_num
        while True:
            line = previous + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                previous = reader.line_num
                yield line, ImportRowError(line, f"malformed CSV: {exc}")
                continue
            previous = reader.line_num
            if not values:
                continue  # a blank line is not a row
            if len(values) != len(columns):
                bad = ImportRowError(
                    line, f"{len(values)} values but the header names {len(columns)} columns"
                )
                yield line, bad
                continue
            yield line, dict(zip(columns, values, strict=True))


def _check_header(header: list[str]) -> list[str]:
    if NOT_UTF8_RE.search("".join(header)):
        raise ImportRowError(1, "the header is not UTF-8 text; save the file as UTF-8")
    columns = [name.strip().lower() for name in header]
    nameless = [str(i) for i, name in enumerate(columns, 1) if not name]
    if nameless:
        raise ImportRowError(1, f"column(s) {', '.join(nameless)} of the header have no name")
    dupes = sorted({name for name in columns if columns.count(name) > 1})
    if dupes:
        raise ImportRowError(1, f"duplicate column(s) in the header: {', '.join(dupes)}")
    unknown = [name for name in columns if name not in IMPORT_COLUMNS]
    if unknown:
        raise ImportRowError(
            1,
            f"unknown column(s) {', '.join(repr(n) for n in unknown)}; allowed: {', '.join(IMPORT_COLUMNS)}",
        )
    if "email" not in columns:
        raise ImportRowError(1, "the header has no 'email' column; every lead needs an email")
    return columns


def _read_jsonl(path: Path) -> Iterator[Record]:
    """Yield ``(line, object)`` or ``(line, error)`` per non-blank line."""
    with path.open("rb") as fh:
        for line, raw in enumerate(fh, 1):
            if line == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = ImportRowError(
                    line, f"not UTF-8 text (byte 0x{raw[exc.start]:02X} at column {exc.start + 1})"
                )
                yield line, bad
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
            except _DuplicateKeyError as exc:
                yield line, ImportRowError(line, f"duplicate key {exc.args[0]!r}")
                continue
            except json.JSONDecodeError as exc:
                yield line, ImportRowError(line, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                yield line, ImportRowError(line, f"expected a JSON object, got {type(obj).__name__}")
                continue
            unknown = [key for key in obj if key not in IMPORT_COLUMNS]
            if unknown:
                names = ", ".join(repr(k) for k in unknown)
                yield (
                    line,
                    ImportRowError(line, f"unknown key(s) {names}; allowed: {', '.join(IMPORT_COLUMNS)}"),
                )
                continue
            yield line, obj


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKeyError(key)
        obj[key] = value
    return obj
