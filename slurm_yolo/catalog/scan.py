"""Read the index: the pending updates, then only the quarters a query needs, filtered in Arrow.

A reader does, in this order (why the order: :mod:`slurm_yolo.archive.index_compact`):

1. list ``pending/`` (what arrived since the last compaction);
2. list ``parquet/`` (one key per quarter) and keep the quarters from ``--since`` on;
3. read those updates and those quarters, all at once; if an update vanished after the listing
   (a compaction folded it in and deleted it), read the quarters again: they hold it now;
4. apply the pending updates of each quarter, and keep the rows that match the query's typed
   conditions (:func:`pushdown`) before any row becomes a Python dict.

At a million runs a ``--since 90d`` query opens 1 or 2 quarterly files, and a full scan turns
into Python objects only the rows that match. The exact semantics stay those of
:mod:`slurm_yolo.catalog.query` (applied after, to what is left): the pushdown only drops rows
that query would drop.

An index not migrated yet (no quarterly file, an ``INDEX.jsonl``) is read as it is, so users
keep working until the admin runs ``slurm-yolo index migrate``.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Sequence

from slurm_yolo.archive import index_format as fmt
from slurm_yolo.archive.index_compact import quarters as list_quarters, read_quarter
from slurm_yolo.archive.index_location import IndexLocation
from slurm_yolo.archive.index_store import (
    LEGACY_JSONL, PENDING, get_object, list_keys, parse_jsonl, parse_pending,
)
from slurm_yolo.catalog import query as q

if TYPE_CHECKING:  # imported where used (start-up time: slurm_yolo.archive.index_format)
    import pyarrow as pa
    import pyarrow.compute as pc

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
}
# Quarters read at once: each is one GET (latency-bound) plus a Parquet decode (which releases
# the GIL). Within the store client's connection pool (slurm_yolo.store.MAX_POOL).
READERS = 24
METRICS = "metrics."


def pushdown(query: q.Query) -> tuple[pc.Expression | None, bool]:
    """The part of ``query`` Arrow can evaluate exactly on the typed columns, or ``None``.

    Exact matches, ``since`` (on ``submitted_time``), and ``--where`` conditions whose
    value has the column's kind (a number on a numeric column or on ``metrics.<field>``,
    text on a text column).
    Arrow compares with null as SQL does (no match), like :class:`~slurm_yolo.catalog.query.Condition`.
    Anything else (``hparams.*``, a number against a text column) is left to
    :func:`slurm_yolo.catalog.query.select`.

    Returns:
        the expression (``None``: nothing to push), and whether it is the whole query.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = [pc.field(name) == value for name, value in query.exact]
    since = _since(query.since)
    if since is not None:
        parts.append(since)
    complete = True
    for cond in query.where:
        kind = fmt.COLUMNS.get(cond.field)
        if kind is not None and kind not in (fmt.TIME, fmt.MAP) and cond.field != "hparams" \
                and isinstance(cond.value, float) == (kind in fmt.NUMERIC):
            parts.append(_COMPARE[cond.op](pc.field(cond.field), cond.value))
        elif cond.field.startswith(METRICS) and isinstance(cond.value, float) and "." not in cond.field[len(METRICS):]:
            # The map's value for the key, null where the run lacks it: no match, as in query.
            value = pc.map_lookup(pc.field("metrics"), pa.scalar(cond.field[len(METRICS):]), "first")
            parts.append(_COMPARE[cond.op](value, cond.value))
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
    key, in both directions: what :func:`slurm_yolo.catalog.query.sort_records` does (ties keep
    the index's order: by quarter, then run ID).
    """
    out = []
    for key in keys:
        name = key.lstrip("-")
        if name not in fmt.COLUMNS or fmt.COLUMNS[name] in (fmt.TIME, fmt.MAP) or name == "hparams":
            return None
        out.append((name, "descending" if key.startswith("-") else "ascending"))
    return out


def read_table(cat: IndexLocation, client: Any = None, *, since: datetime | None = None,
               where: pc.Expression | None = None) -> pa.Table:
    """The index as one table: the quarters from ``since`` on, pending updates applied, rows
    matching ``where``.

    Raises:
        StoreError: the store could not be read, or a quarterly file is not Parquet.
    """
    import pyarrow as pa

    client = client or cat.store.boto3_client()
    keys = [obj["Key"] for obj in list_keys(client, cat.bucket, cat.key(PENDING))]  # first: see the module docstring
    files = list_quarters(cat, client)
    wanted_files = fmt.quarters_since(files, since)
    with ThreadPoolExecutor(READERS) as pool:  # the pending updates and the quarters at once
        got = pool.map(lambda k: get_object(client, cat.bucket, k), keys)
        quarters = dict(zip(wanted_files, pool.map(lambda m: read_quarter(cat, client, m)[0], wanted_files)))
        bodies = list(got)
        if any(body is None for body in bodies):
            # An update vanished after the listing: a compaction folded it into its quarter
            # (maybe a new one) and deleted it, maybe after we read that quarter. List and
            # read the quarters again, now.
            files = list_quarters(cat, client)
            wanted_files = fmt.quarters_since(files, since)
            quarters = dict(zip(wanted_files, pool.map(lambda m: read_quarter(cat, client, m)[0], wanted_files)))
    pending = [rec for _, rec in parse_pending(keys, bodies)]
    if not files:
        legacy = get_object(client, cat.bucket, cat.key(LEGACY_JSONL))
        if legacy is not None:  # not migrated yet: one table, the pending updates over it
            table = fmt.apply_updates(fmt.to_table(parse_jsonl(legacy[0]).values()), pending)[0]
            return table.filter(_and(where, _since(since)))
    updates: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in pending:
        updates[fmt.quarter_of(rec)].append(rec)
    tables = []
    for quarter in fmt.quarters_since(set(files) | set(updates), since):
        table = fmt.apply_updates(quarters[quarter] if quarter in quarters else fmt.empty(), updates.get(quarter, []))[0]
        tables.append(table.filter(where) if where is not None else table)
    return pa.concat_tables(tables) if tables else fmt.empty()


def _since(since: datetime | None) -> pc.Expression | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    return None if since is None else pc.field("submitted_time") >= pa.scalar(since, fmt.arrow_type(fmt.TIME))


def _and(a: pc.Expression | None, b: pc.Expression | None) -> pc.Expression:
    import pyarrow.compute as pc

    if a is None and b is None:
        return pc.scalar(True)
    return a if b is None else b if a is None else a & b


def load_records(cat: IndexLocation, client: Any = None, *, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every run's index record (from ``since`` on), pending updates included."""
    return fmt.from_table(read_table(cat, client, since=since))


def _sort_indices(table: pa.Table, keys: list[tuple[str, str]]) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    if int(pa.__version__.split(".")[0]) >= 25:  # null placement per key; the global option is deprecated
        return pc.sort_indices(table, sort_keys=[(name, order, "at_end") for name, order in keys])
    return pc.sort_indices(table, sort_keys=keys, null_placement="at_end")


def select(cat: IndexLocation, query: q.Query, client: Any = None) -> list[dict[str, Any]]:
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
