"""Read the index: the pending updates, then only the months a query needs, filtered in Arrow.

A reader does, in this order (why the order: :mod:`slurm_yolo.archive.index_compact`):

1. list ``pending/`` and read those updates (what arrived since the last compaction);
2. list ``parquet/`` (one key per month) and keep the months from ``--since`` on;
3. read those months in parallel, apply the pending updates of each, and keep the rows that
   match the query's typed conditions (:func:`pushdown`) before any row becomes a Python dict.

At a million runs a ``--since 90d`` query opens 3 or 4 monthly files, and a full scan turns
into Python objects only the rows that match. The exact semantics stay those of
:mod:`slurm_yolo.catalog.query` (applied after, to what is left): the pushdown only drops rows
that query would drop.

An index not migrated yet (no monthly file, an ``INDEX.jsonl``) is read as it is, so users
keep working until the admin runs ``slurm-yolo index migrate``.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from slurm_yolo.archive import index_format as fmt
from slurm_yolo.archive.index_compact import months as list_months, read_month
from slurm_yolo.archive.index_store import LEGACY_JSONL, Catalog, get_object, parse_jsonl, read_pending
from slurm_yolo.catalog import query as q

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
}
_NUMERIC = (pa.float64(), pa.int64())
# Months read at once: each is one GET plus a Parquet decode (which releases the GIL).
READERS = 8


def pushdown(query: q.Query) -> tuple[pc.Expression | None, bool]:
    """The part of ``query`` Arrow can evaluate exactly on the typed columns, or ``None``.

    Exact matches, ``since`` (on ``submitted_time``), and ``--where`` conditions whose
    value has the column's kind (a number on a numeric column, text on a text column).
    Arrow compares with null as SQL does (no match), like :class:`~slurm_yolo.catalog.query.Condition`.
    Anything else (``hparams.*``, a number against a text column) is left to
    :func:`slurm_yolo.catalog.query.select`.

    Returns:
        the expression (``None``: nothing to push), and whether it is the whole query.
    """
    parts = [pc.field(name) == value for name, value in query.exact]
    if query.since is not None:
        parts.append(pc.field("submitted_time") >= pa.scalar(query.since, fmt.TIME_TYPE))
    complete = True
    for cond in query.where:
        kind = fmt.COLUMNS.get(cond.field)
        if kind is not None and kind != fmt.TIME_TYPE and cond.field != "hparams" \
                and isinstance(cond.value, float) == (kind in _NUMERIC):
            parts.append(_COMPARE[cond.op](pc.field(cond.field), cond.value))
        else:
            complete = False
    if not parts:
        return None, complete
    expr = parts[0]
    for part in parts[1:]:
        expr = expr & part
    return expr, complete


def sort_keys(keys: Sequence[str]) -> list[tuple[str, str]] | None:
    """``--sort`` as Arrow sort keys, or ``None`` when a key is not a typed column (``hparams.*``).

    Arrow sorts stably, by column type (numbers as numbers, text by code point, as Python
    compares ``str``), and with ``null_placement="at_end"`` puts missing values last for every
    key, in both directions: what :func:`slurm_yolo.catalog.query.sort_lines` does (ties keep
    the index's order: by month, then run ID).
    """
    out = []
    for key in keys:
        name = key.lstrip("-")
        if name not in fmt.COLUMNS or name == "hparams" or fmt.COLUMNS[name] == fmt.TIME_TYPE:
            return None
        out.append((name, "descending" if key.startswith("-") else "ascending"))
    return out


def read_table(cat: Catalog, client: Any = None, *, since: datetime | None = None,
               where: pc.Expression | None = None) -> pa.Table:
    """The index as one table: the months from ``since`` on, pending updates applied, rows
    matching ``where``.

    Raises:
        StoreError: the store could not be read, or a monthly file is not Parquet.
    """
    client = client or cat.store.boto3_client()
    pending = [rec for _, rec in read_pending(cat, client)]  # first: see the module docstring
    files = list_months(cat, client)
    updates: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in pending:
        updates[fmt.month_of(rec)].append(rec)
    if not files:
        legacy = get_object(client, cat.bucket, cat.key(LEGACY_JSONL))
        if legacy is not None:  # not migrated yet: one table, the pending updates over it
            table = fmt.apply_updates(fmt.to_table(parse_jsonl(legacy[0]).values()), pending)[0]
            return table.filter(_and(where, _since(since)))

    def month_table(month: str) -> pa.Table:
        table = read_month(cat, client, month)[0] if month in files else fmt.SCHEMA.empty_table()
        table = fmt.apply_updates(table, updates.get(month, []))[0]
        return table.filter(where) if where is not None else table

    wanted = fmt.months_since(set(files) | set(updates), since)
    with ThreadPoolExecutor(READERS) as pool:
        tables = list(pool.map(month_table, wanted))
    return pa.concat_tables(tables) if tables else fmt.SCHEMA.empty_table()


def _since(since: datetime | None) -> pc.Expression | None:
    return None if since is None else pc.field("submitted_time") >= pa.scalar(since, fmt.TIME_TYPE)


def _and(a: pc.Expression | None, b: pc.Expression | None) -> pc.Expression:
    if a is None and b is None:
        return pc.scalar(True)
    return a if b is None else b if a is None else a & b


def load_records(cat: Catalog, client: Any = None, *, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every run's index record (from ``since`` on), pending updates included."""
    return fmt.from_table(read_table(cat, client, since=since))


def _sort_indices(table: pa.Table, keys: list[tuple[str, str]]) -> pa.Array:
    if int(pa.__version__.split(".")[0]) >= 25:  # null placement per key; the global option is deprecated
        return pc.sort_indices(table, sort_keys=[(name, order, "at_end") for name, order in keys])
    return pc.sort_indices(table, sort_keys=keys, null_placement="at_end")


def select(cat: Catalog, query: q.Query, client: Any = None) -> list[dict[str, Any]]:
    """``runs list``: the records matching ``query``, sorted and limited, reading as little as it can."""
    where, _ = pushdown(query)
    return query_table(read_table(cat, client, since=query.since, where=where), query, filtered=True)


def query_table(table: pa.Table, query: q.Query, *, filtered: bool = False) -> list[dict[str, Any]]:
    """The records of ``table`` matching ``query``, sorted and limited.

    When Arrow can do all of it (every condition pushed down, every sort key a typed column)
    only the rows returned become Python objects; otherwise the rest is done by
    :func:`slurm_yolo.catalog.query.select` on what Arrow left. ``filtered``: the pushdown
    was applied already (by :func:`read_table`).
    """
    where, complete = pushdown(query)
    if where is not None and not filtered:
        table = table.filter(where)
    keys = sort_keys(query.sort)
    if not complete or keys is None:
        return q.select(fmt.from_table(table), query)
    if keys and table.num_rows:
        table = table.take(_sort_indices(table, keys))
    if query.limit is not None:
        table = table.slice(0, query.limit)
    return fmt.from_table(table)
