"""The compacted index's file format: one Parquet file per calendar quarter of submission.

::

    <index_url>parquet/quarter=2026-Q4/runs.parquet   the runs submitted October-December 2026 (UTC)
    <index_url>parquet/quarter=none/runs.parquet      runs with neither submitted_at nor start

Hive-style partition folders, one file each under a fixed name: DuckDB, Polars, Spark and
Athena read the folder as one table with a ``quarter`` column and skip the quarters a
``WHERE quarter >= ...`` rules out (docs/admin.md shows each). The ``quarter`` column is only in
the path, never in the file (Spark refuses a column that is in both). The quarter is that of
``submitted_at`` (else ``start``), the field ``runs list --since`` filters on, so a reader
needs only the quarters from the ``--since`` cutoff on.

Why quarters, not months: each file is one request and one decode whatever its size, and
that fixed cost dominates a full read of a small index (10,000 runs over three years are 36
months but 12 quarters). A quarter of a million-run site (~80,000 runs, a few MB) is still
read, filtered and rewritten in well under a second.

Columns are those of :func:`slurm_yolo.archive.layout.index_record` with fixed types, plus:

- ``indexed_at``: when the epilog wrote this version of the record (ISO UTC, microseconds).
  Of two versions of a run the later one wins, whatever order compactions see them in.
- ``submitted_time``: ``submitted_at`` (else ``start``) as a UTC timestamp, for range filters
  without string parsing (readers drop it from the records they return).

- ``fitness_metric``, ``fitness``: the ``results.csv`` column that ranks the run's epochs (its
  task's, e.g. ``metrics/accuracy_top1``) and its value at the best epoch.
- ``metrics``: every metric of the best epoch, ``map<string, double>`` keyed by
  :func:`slurm_yolo.tasks.metric_field` names (``top1``, ``map50_95_mask``, ``miou``); open-ended,
  since each task (and each Ultralytics release) has its own set. DuckDB reads
  ``metrics['top1']``, Polars a ``Map`` column, Arrow filters it with ``map_lookup``.

The file's schema version is in its Parquet key-value metadata (:data:`SCHEMA_KEY`). A file
without one is version 1 (box metrics only): it is read as if written now, its rows given the
fitness and metrics their box columns hold (:func:`slurm_yolo.record.fitness_of`), and the next
compaction of its quarter writes it as the current version. A file of a newer version than
:data:`SCHEMA_VERSION` is refused with one error: this reader would drop what it does not know,
and a compaction would write that loss back.

``bytes``, ``objects``: what the store holds under the run's folder, listed by the archiver
after it shipped the run; ``gpu_hours``, ``cpu_hours``: its allocation x wall time
(:func:`slurm_yolo.archive.layout.allocated_hours`). They are null in rows indexed before
they existed (version 2 files read as if written now, with those columns null; ``store usage``
counts such runs apart rather than guessing).

``hparams`` is a JSON text: the recorded training arguments are open-ended and of mixed
types (``model`` a string, ``lr0`` a number), which a fixed Parquet type cannot hold
losslessly. DuckDB's ``hparams->>'lr0'``, Athena's ``json_extract_scalar`` read it.
A value of the wrong type for its column (only a hand-edited ``run.json`` has one) is
stored as null, which no ``--where`` condition matches, as before.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from functools import cache
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from slurm_yolo.archive.index_store import newer
from slurm_yolo.errors import ConfigError
from slurm_yolo.record import BOX_FIELDS, BOX_FITNESS, BOX_RANKED_TASKS, fitness_of, metric_values
from slurm_yolo.timeparse import parse_time

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc

# pyarrow (with numpy) is imported inside the functions that use it: it costs ~0.15 s, which
# every `slurm-yolo` command (submit, --help) would otherwise pay at start-up for a module
# that only the index commands use.

PARTS = "parquet/"
PART_FILE = "runs.parquet"
NO_TIME = "none"
# The version of the columns below, in every file's metadata: 1 had the box metrics only,
# 2 added fitness_metric, fitness and the metrics map, 3 the run's size and hours.
SCHEMA_VERSION = 3
SCHEMA_KEY = b"slurm_yolo.index_schema"

# Column kinds: pyarrow's names for the types (see :func:`arrow_type`).
STR, F64, I64, TIME, MAP = "string", "double", "int64", "timestamp[us, tz=UTC]", "map<string, double>"
NUMERIC = (F64, I64)
# Column order = layout.index_record's order, then the two columns of this format.
COLUMNS: dict[str, str] = {
    "run_id": STR, "sweep_id": STR, "task": STR, "project": STR, "model_name": STR,
    "dataset_version": STR, "dataset_fingerprint": STR, "user": STR, "gpu": STR,
    "submitted_at": STR, "start": STR, "end": STR, "attempts": I64, "end_state": STR, "job_id": STR,
    "map50": F64, "map50_95": F64, "precision": F64, "recall": F64, "epochs_done": I64,
    "fitness_metric": STR, "fitness": F64, "metrics": MAP,
    "hparams": STR, "archive_url": STR, "reproduces": STR,
    "bytes": I64, "objects": I64, "gpu_hours": F64, "cpu_hours": F64,
    "indexed_at": STR, "submitted_time": TIME,
}
# Columns a reader turns back into the record's own shape.
DERIVED = ("submitted_time",)
# Row groups small enough that min/max statistics let a scan skip most of a quarter.
ROW_GROUP = 16_384


def arrow_type(kind: str) -> pa.DataType:
    """The pyarrow type of a column kind (:data:`STR`, :data:`F64`, :data:`I64`, :data:`TIME`, :data:`MAP`)."""
    import pyarrow as pa

    if kind == MAP:
        return pa.map_(pa.string(), pa.float64())
    return pa.timestamp("us", tz="UTC") if kind == TIME else pa.type_for_alias(kind)


@cache
def schema() -> pa.Schema:
    """The schema of every quarter's file: :data:`COLUMNS` with their pyarrow types."""
    import pyarrow as pa

    return pa.schema([pa.field(name, arrow_type(kind)) for name, kind in COLUMNS.items()],
                     metadata={SCHEMA_KEY: str(SCHEMA_VERSION).encode()})


def empty() -> pa.Table:
    """A table of :func:`schema` with no rows."""
    return schema().empty_table()


def record_time(record: Mapping[str, Any]) -> datetime | None:
    """The time ``--since`` compares with: ``submitted_at``, else ``start`` (UTC)."""
    return parse_time(record.get("submitted_at") or record.get("start"))


def quarter_name(when: datetime) -> str:
    """``2026-Q4`` for a time in October to December 2026 (UTC); these sort as text."""
    when = when.astimezone(timezone.utc)
    return f"{when.year:04d}-Q{(when.month - 1) // 3 + 1}"


def quarter_of(record: Mapping[str, Any]) -> str:
    """The partition of a record: ``2026-Q4``, or ``none`` without a time."""
    when = record_time(record)
    return quarter_name(when) if when else NO_TIME


def part_rel(quarter: str) -> str:
    """Key of a quarter's file, relative to the index URL."""
    return f"{PARTS}quarter={quarter}/{PART_FILE}"


def quarter_of_key(key: str) -> str | None:
    """``2026-Q4`` from ``.../parquet/quarter=2026-Q4/runs.parquet``; ``None`` for any other key."""
    folder, _, name = key.rpartition("/")
    quarter = folder.rpartition("/")[2]
    if name != PART_FILE or not quarter.startswith("quarter="):
        return None
    return quarter[len("quarter="):]


def quarters_since(quarters: Iterable[str], since: datetime | None) -> list[str]:
    """The quarters a reader must open for ``--since`` (all of them without one); ``none`` never
    matches a time filter."""
    if since is None:
        return sorted(quarters)
    first = quarter_name(since)
    return sorted(q for q in quarters if q != NO_TIME and q >= first)


def _typed(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == STR:
        return value if isinstance(value, str) else str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if kind == I64:
        return int(value) if float(value).is_integer() else None
    return float(value)


def to_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as a row of :func:`schema` (``hparams`` as JSON, the derived time added).

    A record of an older epilog (no ``fitness_metric``, no ``metrics``) gets them from its box
    columns (:func:`legacy_fields`).
    """
    if "fitness_metric" not in record or "metrics" not in record:
        record = {**legacy_fields(record), **record}
    row = {name: _typed(record.get(name), kind) for name, kind in COLUMNS.items() if kind not in (TIME, MAP)}
    hparams = record.get("hparams")
    row["hparams"] = json.dumps(hparams, sort_keys=True, default=str) if isinstance(hparams, dict) else None
    row["metrics"] = list(metric_values(record.get("metrics")).items())
    row["submitted_time"] = record_time(record)
    return row


def legacy_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """``fitness_metric``, ``fitness`` and ``metrics`` of an index record written before they
    existed, from its box columns (the only metrics records had then)."""
    box = {name: record.get(name) for name in BOX_FIELDS if record.get(name) is not None}
    return {**fitness_of(record.get("task"), box), "metrics": box}


def to_table(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Records as one table of :func:`schema`, sorted by run ID."""
    import pyarrow as pa

    table = pa.Table.from_pylist([to_row(r) for r in records], schema=schema())
    return table.sort_by("run_id") if table.num_rows else table


def from_table(table: pa.Table) -> list[dict[str, Any]]:
    """Rows back as index records (``hparams`` a dict again, derived columns dropped)."""
    table = table.drop_columns([c for c in DERIVED if c in table.column_names])
    metrics = _metric_dicts(table["metrics"]) if "metrics" in table.column_names else None
    rows: list[dict[str, Any]] = table.drop_columns([c for c in ("metrics",) if metrics is not None]).to_pylist()
    if metrics is not None:
        for row, values in zip(rows, metrics):
            row["metrics"] = values
    texts = [row.get("hparams") or "{}" for row in rows]
    try:  # one parse for all rows: 10x faster than one json.loads per row at 100k rows
        parsed = json.loads("[" + ",".join(texts) + "]")
    except ValueError:  # a damaged text somewhere: row by row, so only that row loses its hparams
        parsed = [_loads_or_empty(t) for t in texts]
    for row, hparams in zip(rows, parsed):
        row["hparams"] = hparams if isinstance(hparams, dict) else {}
    return rows


def _metric_dicts(column: pa.ChunkedArray) -> list[dict[str, float]]:
    """The metrics maps as dicts (``{}`` for null), from the flat keys and values: 3x faster than
    ``to_pylist`` of the map, which builds a list of tuples per row first."""
    out: list[dict[str, float]] = []
    for chunk in column.chunks:
        offsets = chunk.offsets.to_pylist()
        keys, values = chunk.keys.to_pylist(), chunk.items.to_pylist()
        out += [dict(zip(keys[a:b], values[a:b])) for a, b in zip(offsets, offsets[1:])]
    return out


def _loads_or_empty(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {}


def encode(table: pa.Table) -> bytes:
    """A quarter's Parquet file (zstd; statistics on, for readers that skip row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table.cast(schema()), sink, compression="zstd", row_group_size=ROW_GROUP,
                   write_statistics=True)
    body: bytes = sink.getvalue().to_pybytes()
    return body


def decode(body: bytes, filter_: pc.Expression | None = None) -> pa.Table:
    """A quarter's file as a table of :func:`schema`, rows matching ``filter_`` only.

    Columns missing from an older file come back as nulls, except the fitness and metrics of
    a version 1 file, filled from its box columns (:func:`legacy_fields`); a file that is not
    Parquet raises ``pyarrow.ArrowInvalid`` (a ``ValueError``; the caller names the key).

    Raises:
        ConfigError: the file was written by a newer slurm-yolo (its schema version is above
            :data:`SCHEMA_VERSION`): names both versions and the upgrade.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    # ParquetFile.read, not read_table: no dataset machinery, twice as fast on a quarter's small file.
    table = pq.ParquetFile(pa.BufferReader(body)).read(use_threads=False)
    version = file_version(table.schema)
    if version > SCHEMA_VERSION:
        raise ConfigError(f"this index file has schema version {version}, written by a newer slurm-yolo; this "
                          f"slurm-yolo reads versions up to {SCHEMA_VERSION}: upgrade slurm-yolo "
                          "(pip install -U slurm-yolo) on this host")
    legacy = "metrics" not in table.column_names
    for name, kind in COLUMNS.items():
        if name not in table.column_names:
            arrow = arrow_type(kind)
            table = table.append_column(pa.field(name, arrow), pa.nulls(table.num_rows, arrow))
    table = table.select(list(COLUMNS)).cast(schema())
    if legacy and table.num_rows:
        table = _fill_legacy(table)
    return table.filter(filter_) if filter_ is not None else table


def file_version(file_schema: pa.Schema) -> int:
    """The schema version a file's metadata states (1: written before versions were stated)."""
    raw = (file_schema.metadata or {}).get(SCHEMA_KEY)
    try:
        return int(raw) if raw is not None else 1
    except ValueError:
        return SCHEMA_VERSION + 1  # unreadable: treat as a format this reader does not know


def _fill_legacy(table: pa.Table) -> pa.Table:
    """:func:`legacy_fields` for every row of a version 1 table, in Arrow (a quarter of 100,000
    rows in milliseconds; row by row it took seconds on every read)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    tasks = pa.array(sorted(t for t in BOX_RANKED_TASKS if t is not None), pa.string())
    box_ranked = pc.or_(pc.is_in(table["task"], value_set=tasks), pc.is_null(table["task"]))  # no task: detection's days
    ranked = pc.and_(box_ranked, pc.is_valid(table["map50_95"]))
    table = table.set_column(table.schema.get_field_index("fitness"), "fitness",
                             pc.if_else(ranked, table["map50_95"], pa.scalar(None, pa.float64())))
    table = table.set_column(table.schema.get_field_index("fitness_metric"), "fitness_metric",
                             pc.if_else(ranked, pa.scalar(BOX_FITNESS), pa.scalar(None, pa.string())))
    values = np.stack([table[name].to_numpy(zero_copy_only=False).astype(float) for name in BOX_FIELDS], axis=1)
    valid = ~np.isnan(values)  # to_numpy turns nulls into NaN; a stored NaN is no metric either
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    keys = np.broadcast_to(np.array(BOX_FIELDS, dtype=object), values.shape)[valid]
    metrics = pa.MapArray.from_arrays(pa.array(offsets), pa.array(keys, pa.string()),
                                      pa.array(values[valid], pa.float64()))
    return table.set_column(table.schema.get_field_index("metrics"), "metrics", metrics)


def apply_updates(table: pa.Table, updates: Sequence[Mapping[str, Any]]) -> tuple[pa.Table, int]:
    """``table`` with ``updates`` applied by :func:`~slurm_yolo.archive.index_store.newer`; returns
    it and how many runs changed.

    Updates are applied in ``indexed_at`` order, each against the run's row as it stands, so
    the result does not depend on the order compactions and listings saw them in. Only the
    rows of the updated runs become Python objects: folding a few new records into a quarter
    of tens of thousands of runs stays cheap. ``table`` must be the whole quarter (not a
    filtered part): whether an update wins depends on the row it would replace.
    """
    import pyarrow as pa

    valid = [rec for rec in updates if isinstance(rec.get("run_id"), str) and rec.get("run_id")]
    if not valid:
        return table, 0
    hit = has_run_id(table, {str(rec["run_id"]) for rec in valid})
    state: dict[str, Mapping[str, Any]] = {row["run_id"]: row for row in from_table(table.filter(hit))}
    changed: set[str] = set()
    for rec in sorted(valid, key=lambda r: str(r.get("indexed_at") or "")):
        if newer(state.get(rec["run_id"]), rec):
            state[rec["run_id"]] = rec
            changed.add(rec["run_id"])
    if not changed:
        return table, 0
    out = pa.concat_tables([without(table, changed), to_table(state[rid] for rid in changed)])
    return out.sort_by("run_id"), len(changed)


def has_run_id(table: pa.Table, run_ids: Iterable[str]) -> pa.ChunkedArray:
    """A mask of the rows whose run is one of ``run_ids``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.is_in(table["run_id"], value_set=pa.array(sorted(run_ids), pa.string()))


def without(table: pa.Table, run_ids: Iterable[str]) -> pa.Table:
    """``table`` less the rows of ``run_ids``."""
    import pyarrow.compute as pc

    return table.filter(pc.invert(has_run_id(table, run_ids)))
