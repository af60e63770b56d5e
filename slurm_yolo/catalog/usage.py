"""What the archive holds and what the runs used: ``slurm-yolo store usage`` (pure, no I/O).

Every figure comes from the index records alone (:func:`slurm_yolo.archive.layout.index_record`),
so a usage report of a million-run store reads the quarterly Parquet files and nothing else:

- ``bytes``, ``objects``: what the store holds under the run's folder (its files, ``run.json``,
  ``MANIFEST.json``, every attempt's record), listed by the archiver right after it shipped
  the run (:func:`slurm_yolo.archive.layout.stored_totals`);
- ``gpu_hours``, ``cpu_hours``: nodes x GPUs (CPUs) per node x wall time of each attempt, as
  the run's Slurm allocation asked for them (:func:`slurm_yolo.archive.layout.allocated_hours`).

Records indexed before those fields existed are counted as runs but never guessed: each group
says how many of its runs have no size (``unsized``) or no hours (``unmetered``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from slurm_yolo.timeparse import parse_time

GROUPINGS = ("project", "user", "task")
# Storage classes as S3 names them (what a lifecycle rule moves objects to).
STANDARD = "STANDARD"
GB = 1e9
# A month of storage as the providers bill it (730 hours).
MONTH_S = 730 * 3600.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _when(record: Mapping[str, Any]) -> datetime | None:
    """The time ``--since`` compares with: ``submitted_at``, else ``start`` (as ``runs list``)."""
    return parse_time(record.get("submitted_at") or record.get("start"))


def usage_table(records: Iterable[Mapping[str, Any]], by: str = "project",
                since: datetime | None = None) -> list[dict[str, Any]]:
    """Runs, objects, bytes, GPU-hours and CPU-hours per group of index records.

    Args:
        records: index records (what :func:`slurm_yolo.catalog.index.load_records` returns).
        by: ``project``, ``user`` or ``task``: the record field the groups are keyed by.
        since: only runs submitted (else started) at or after this time; ``None``: all.

    Returns:
        One dict per group, largest ``bytes`` first (then by name): ``{by: name, "runs": N,
        "objects": N, "bytes": N, "gpu_hours": x, "cpu_hours": x, "unsized": N, "unmetered": N}``.
        ``unsized`` runs (indexed before sizes were recorded) add nothing to ``objects`` and
        ``bytes``; ``unmetered`` ones nothing to the hours.

    Raises:
        ValueError: ``by`` is not one of :data:`GROUPINGS`.
    """
    if by not in GROUPINGS:
        raise ValueError(f"usage by {by!r}: expected one of {', '.join(GROUPINGS)}")
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    groups: dict[str, dict[str, Any]] = {}
    for record in records:
        if since is not None:
            when = _when(record)
            if when is None or when < since:
                continue
        name = str(record.get(by) or "")
        row = groups.setdefault(name, {by: name, "runs": 0, "objects": 0, "bytes": 0, "gpu_hours": 0.0,
                                       "cpu_hours": 0.0, "unsized": 0, "unmetered": 0})
        row["runs"] += 1
        size, objects = _number(record.get("bytes")), _number(record.get("objects"))
        if size is None or objects is None:
            row["unsized"] += 1
        else:
            row["bytes"] += int(size)
            row["objects"] += int(objects)
        gpu, cpu = _number(record.get("gpu_hours")), _number(record.get("cpu_hours"))
        if gpu is None or cpu is None:
            row["unmetered"] += 1
        else:
            row["gpu_hours"] += gpu
            row["cpu_hours"] += cpu
    for row in groups.values():
        row["gpu_hours"], row["cpu_hours"] = round(row["gpu_hours"], 6), round(row["cpu_hours"], 6)
    return sorted(groups.values(), key=lambda row: (-row["bytes"], row[by]))


def storage_class(age_days: float, transitions: Sequence[tuple[int, str]]) -> str:
    """The storage class an object ``age_days`` old is in under a lifecycle rule's transitions
    (``[(days, class)]``, as ``store lifecycle`` writes them); ``STANDARD`` before the first."""
    current = STANDARD
    for days, cls in sorted(transitions):
        if age_days >= days:
            current = cls
    return current


def monthly_cost(records: Iterable[Mapping[str, Any]], by: str, rates: Mapping[str, float],
                 transitions: Sequence[tuple[int, str]] = (), now: datetime | None = None) -> dict[str, float]:
    """Estimated cost of one month of storage per group: each run's bytes x the ``$/GB-month``
    rate of the storage class its age puts it in (the bucket's lifecycle ``transitions``).

    A class without a rate costs what ``STANDARD`` costs (the estimate errs high, never low);
    runs without a size cost nothing here and are counted as ``unsized`` by :func:`usage_table`.
    """
    now = now or datetime.now(timezone.utc)
    out: dict[str, float] = {}
    for record in records:
        size = _number(record.get("bytes"))
        name = str(record.get(by) or "")
        out.setdefault(name, 0.0)
        if size is None:
            continue
        when = parse_time(record.get("end")) or _when(record)
        age = (now - when).total_seconds() / 86400 if when else 0.0
        cls = storage_class(age, transitions)
        rate = rates.get(cls, rates.get(STANDARD, 0.0))
        out[name] += size / GB * rate
    return {name: round(cost, 4) for name, cost in out.items()}


def lifecycle_transitions(rules: Sequence[Mapping[str, Any]]) -> list[tuple[int, str]]:
    """``[(days, storage class)]`` of the enabled rules' transitions (S3's lifecycle shape)."""
    return sorted((int(t["Days"]), str(t["StorageClass"])) for rule in rules if rule.get("Status") == "Enabled"
                  for t in rule.get("Transitions") or [] if "Days" in t and "StorageClass" in t)


def totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum of a usage table's rows (the ``total`` line)."""
    keys = ("runs", "objects", "bytes", "gpu_hours", "cpu_hours", "unsized", "unmetered")
    out: dict[str, Any] = {k: sum(row[k] for row in rows) for k in keys}
    out["gpu_hours"], out["cpu_hours"] = round(out["gpu_hours"], 6), round(out["cpu_hours"], 6)
    return out
