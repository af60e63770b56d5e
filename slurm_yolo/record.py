"""``run.json``: the record of one run, and atomic reads and writes of it.

The launcher creates it, the job fills in the environment, attempts, status and metrics,
and the epilog records the end state of each attempt. Each writer replaces the whole file
atomically (temp file in the same folder + ``os.replace``), so a reader never sees half a
record and a kill mid-write leaves the previous version.

Schema (``schema: 1``)::

    run_id, sweep_id, array_index, reproduces
    task, project, model_name, user, uid, host, submitted_at
    config        the fully resolved config
    code          {repo, commit, dirty} or null
    dataset       {path, version, fingerprint, files}
    archive_url   s3://.../<task>/<project>/<model_name>/<run_id>/
    slurm         {job_id, array_job_id, array_task_id}
    environment   {python, torch, ultralytics, cuda, gpu, node, platform}
    attempts      [{attempt, node, start, end, end_state, exit_code, epoch, signals: [{signal, time}]}]
    status        SUBMITTED | RUNNING | COMPLETED | FAILED | ... (what the job last said)
    end_state     the epilog's verdict for the last attempt: COMPLETED, FAILED, OUT_OF_MEMORY, TIMEOUT,
                  CANCELLED, PREEMPTED, REQUEUED, NODE_FAIL or UNKNOWN (states.EndState, docs/admin.md)
    fitness_metric  the results.csv column that ranks the run's epochs (the task's TASK2METRIC)
    metrics       the best epoch of results.csv (read_metrics): {epochs_done, best_epoch, epoch,
                  fitness_metric, fitness, map50, map50_95, precision, recall, <field>...} with
                  every metrics/* column under its tasks.metric_field name (top1, map50_95_mask, ...)

Next to it, ``.placement.json`` (:func:`write_placement`) keeps where the run is archived
(``run_id``, ``task``, ``project``, ``model_name``, ``archive_url``), written once at submit
time: a run.json damaged later does not move the run away from the URL ``submit`` printed.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from slurm_yolo.errors import ConfigError
from slurm_yolo.runfolder import PLACEMENT, RUN_JSON, RUN_LOCK
from slurm_yolo.tasks import DEFAULT_TASK, installed_tasks, metric_field

SCHEMA_VERSION = 1
# What the epilog needs to place a run in the store when run.json cannot be used.
PLACEMENT_KEYS = ("run_id", "task", "project", "model_name", "archive_url")

# The box set's fields: always in a run's metrics (``None`` without boxes), so queries written
# for detection (``--where map50_95>0.8``) keep working on every task.
BOX_FIELDS = ("map50", "map50_95", "precision", "recall")
# What epochs were ranked by before each task had its own metric (and, for detect and obb,
# still are): the default when a run's own column is unknown.
BOX_FITNESS = "metrics/mAP50-95(B)"
# The tasks whose runs were ranked by box mAP50-95 before records named their fitness column
# (Ultralytics' TASK2METRIC for them; records of other tasks from then get no fitness).
BOX_RANKED_TASKS = frozenset({"detect", "obb", None})
# Keys of run.json's ``metrics`` that are not metric values.
_BOOKKEEPING = frozenset({"epoch", "epochs_done", "best_epoch", "fitness_metric", "fitness"})
# results.csv is written by the user's job: a file with thousands of metrics/ columns must not
# bloat the record and every index row. Ultralytics' largest set today (segment, pose) has 8.
MAX_METRIC_FIELDS = 64


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string with seconds, e.g. ``2026-11-22T12:00:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_record(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``run_dir/run.json``.

    Raises:
        FileNotFoundError: no record there.
        ValueError: the file is not a JSON object.
    """
    with open(Path(run_dir) / RUN_JSON, encoding="utf-8") as f:
        record = json.load(f)
    if not isinstance(record, dict):
        raise ValueError(f"{run_dir}/{RUN_JSON} is not a JSON object")
    return record


def write_json_atomic(path: str | os.PathLike[str], obj: Any, mode: int = 0o644) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_record(run_dir: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Atomically replace ``run_dir/run.json`` with ``record``."""
    write_json_atomic(Path(run_dir) / RUN_JSON, record)


def update_record(run_dir: str | os.PathLike[str], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read the record, apply ``change`` to it in place, write it back atomically; return it.

    The launcher (recording the job ID right after sbatch) and a job that already started
    can overlap, so the read-modify-write holds an exclusive ``flock`` on ``.run.lock``.
    """
    lock_fd = os.open(Path(run_dir) / RUN_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        record = read_record(run_dir)
        change(record)
        write_record(run_dir, record)
        return record
    finally:
        os.close(lock_fd)


def placement_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """The placement of a run (:data:`PLACEMENT_KEYS`) from its record."""
    return {k: record.get(k) for k in PLACEMENT_KEYS}


def write_placement(run_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Write ``run_dir/.placement.json`` atomically from the run's initial record.

    The launcher calls it once, at submit time, beside the first run.json; nothing rewrites
    it afterwards, so whatever happens to run.json, the epilog still knows where the run goes.
    """
    write_json_atomic(Path(run_dir) / PLACEMENT, placement_of(record))


def read_metrics(results_csv: str | os.PathLike[str],
                 fitness_metric: str | Sequence[str | None] | None = None) -> dict[str, Any] | None:
    """The best epoch's metrics from an Ultralytics ``results.csv``, best by the task's metric.

    Args:
        results_csv: the run's ``results.csv``.
        fitness_metric: the column that ranks epochs (``TASK2METRIC`` of the run's task, as
            the launcher recorded it), or candidates in order of trust. A candidate counts
            only if it is a ``metrics/`` column of this file: run.json is written by the
            user's job, and a stale or foreign name must not leave a run without a metric.
            None valid: :func:`default_fitness_metric`.

    Returns:
        ``None`` when the file is missing or has no data rows yet; else
        ``{epochs_done, best_epoch, epoch, fitness_metric, fitness, <field>: value ...}``
        with every ``metrics/*`` column of the best epoch under its
        :func:`slurm_yolo.tasks.metric_field` name (``map50_95``, ``map50_95_mask``,
        ``top1``, ...). ``map50``, ``map50_95``, ``precision`` and ``recall`` (the box set)
        are always there, ``None`` for a task without boxes, so detection queries keep working.

    The best epoch is the one with the highest value of the fitness column; of equal values
    the later epoch wins, as Ultralytics re-saves ``best.pt`` when an epoch ties the best.
    Epochs without a value rank below any value. Column names are stripped: older
    Ultralytics versions pad them with spaces.
    """
    header, rows = read_results_table(results_csv)
    if not rows:
        return None
    column = choose_fitness_metric(header, fitness_metric)
    ranked = [(i, _num(row.get(column), float) if column else None) for i, row in enumerate(rows)]
    best_i = max(ranked, key=lambda item: (item[1] is not None, item[1] or 0.0, item[0]))[0]
    best = _metric_row(header, rows[best_i])
    fitness = _num(rows[best_i].get(column), float) if column else None
    return {**best, "best_epoch": best["epoch"], "epochs_done": len(rows), "fitness_metric": column,
            "fitness": fitness}


def fitness_candidates(record: Mapping[str, Any], *, with_task: bool = False) -> list[str | None]:
    """The ranking columns a run's record names, most trusted first: the one the launcher
    recorded from the installed Ultralytics at submit time, then the one the job last used.

    ``with_task`` adds the column of the run's task in the Ultralytics installed here, for
    records written before the launcher recorded one (where Ultralytics is not installed, or
    does not know the task, nothing is added: the default column stands).
    """
    metrics = record.get("metrics")
    candidates = [record.get("fitness_metric"), metrics.get("fitness_metric") if isinstance(metrics, Mapping) else None]
    if with_task:
        try:
            candidates.append(installed_tasks().selection_column(str(record.get("task") or DEFAULT_TASK)))
        except ConfigError:
            pass
    return candidates


def choose_fitness_metric(header: Sequence[str], candidates: str | Sequence[str | None] | None) -> str | None:
    """The first of ``candidates`` that is a ``metrics/`` column of ``header``, else the default."""
    if isinstance(candidates, str) or candidates is None:
        candidates = [candidates]
    for name in candidates:
        if isinstance(name, str) and name.strip().startswith("metrics/") and name.strip() in header:
            return name.strip()
    return default_fitness_metric(header)


def default_fitness_metric(header: Sequence[str]) -> str | None:
    """The ranking column when the run's own is unknown: box mAP50-95 (what runs were ranked by
    before tasks had their own metric), else the first ``metrics/`` column, else ``None``."""
    if BOX_FITNESS in header:
        return BOX_FITNESS
    return next((c for c in header if c.startswith("metrics/")), None)


def metric_values(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The metric fields of a run.json ``metrics`` object: numbers only, without the bookkeeping
    keys (``epoch``, ``epochs_done``, ``best_epoch``, ``fitness_metric``, ``fitness``)."""
    if not isinstance(metrics, Mapping):
        return {}
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if name in _BOOKKEEPING or not isinstance(name, str) or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value) and len(out) < MAX_METRIC_FIELDS:
            out[name] = float(value)
    return out


def fitness_of(task: Any, metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{fitness_metric, fitness}`` of a run of ``task`` from its ``metrics`` (run.json's).

    Metrics written before runs named their fitness column hold the box set only: a detect or
    obb run (or one without a task) is then ranked by box mAP50-95, what Ultralytics ranks
    those by. Any other task gets no fitness (``None``): its box mAP is not what it is chosen by.
    """
    metrics = metrics if isinstance(metrics, Mapping) else {}
    column, value = metrics.get("fitness_metric"), metrics.get("fitness")
    if column is None and isinstance(task, (str, type(None))) and task in BOX_RANKED_TASKS \
            and metrics.get("map50_95") is not None:
        column, value = BOX_FITNESS, metrics.get("map50_95")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        value = None
    return {"fitness_metric": column if isinstance(column, str) else None,
            "fitness": None if value is None else float(value)}


def read_results_rows(results_csv: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All rows of ``results.csv`` as ``{epoch, <field>: value ...}`` dicts, one per epoch.

    The fields are every ``metrics/*`` column under its :func:`slurm_yolo.tasks.metric_field`
    name; the box set (``map50``, ``map50_95``, ``precision``, ``recall``) is always there,
    ``None`` where the task has no boxes.
    """
    header, rows = read_results_table(results_csv)
    return [_metric_row(header, raw) for raw in rows]


def read_results_table(results_csv: str | os.PathLike[str]) -> tuple[list[str], list[dict[str, str]]]:
    """The stripped header and raw text rows of ``results.csv`` (``[], []`` when it is missing)."""
    try:
        with open(results_csv, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows = [{k: (v or "").strip() for k, v in zip(header, row)} for row in reader if row]
    except FileNotFoundError:
        return [], []
    return header, rows


def _metric_row(header: Sequence[str], raw: Mapping[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": _num(raw.get("epoch"), int), **dict.fromkeys(BOX_FIELDS)}
    for column in header:
        name = metric_field(column)
        if name and name not in _BOOKKEEPING and (name in row or len(row) < MAX_METRIC_FIELDS):
            row[name] = _num(raw.get(column), float)
    return row


def _num(text: str | None, kind: type):
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    if value is None or not math.isfinite(value):
        return None
    return kind(value)
