"""Store layout: where a run lives, and the index record that finds it.

::

    <archive prefix>/<task>/<project>/<model_name>/<run_id>/   the run folder as is, plus
        run.json        the record, with the end state          (uploaded last: commit marker)
        MANIFEST.json   size + sha256 of every other file        (uploaded last: commit marker)
        attempts/attempt-<n>.json   run.json as attempt n ended (requeued runs have several)
    <index_url>runs/<run_id>.json                                one index record per run
    <index_url>pending/<run_id>/<user>/<utc>-<rand>.json         an update not compacted yet, by <user>
    <index_url>parquet/quarter=YYYY-Qn/runs.parquet                compacted records, by quarter

Per-run index objects mean concurrent epilogs never write the same key; compaction folds the
pending updates into the quarterly Parquet files with conditional writes
(:mod:`slurm_yolo.archive.index_store`, :mod:`slurm_yolo.archive.index_compact`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from slurm_yolo.archive.manifest import MANIFEST as MANIFEST  # where readers of the layout look for it
from slurm_yolo.record import fitness_of, metric_values
from slurm_yolo.timeparse import parse_time

INDEX_RUNS = "runs/"
# Training arguments worth having in the index without opening run.json.
KEY_HPARAMS = ("model", "epochs", "imgsz", "batch", "lr0", "lrf", "optimizer", "momentum", "weight_decay", "seed")


def user_prefix(template: str, user: str) -> str:
    """A prefix with ``{user}`` filled in, ending in exactly one ``/`` (``s3://b/runs/alice/``)."""
    return template.replace("{user}", user).rstrip("/") + "/"


def is_under(url: str, prefix: str) -> bool:
    """Whether ``url`` lies under ``prefix`` with no ``..``/``.`` step or control character that
    could make it land elsewhere (user-writable values are checked with this before use)."""
    return url.startswith(prefix) and "/../" not in url and "/./" not in url and not url.endswith("/..") \
        and not any(ord(c) < 32 or ord(c) == 127 for c in url)


@dataclass(frozen=True)
class RunLocation:
    """Where one run lives in the store: ``<prefix><task>/<project>/<model_name>/<run_id>/``.

    The one place that lays a run out; the launcher, the epilog, the catalog and the portal
    all build run URLs through it. The names are validated where they come from
    (:mod:`slurm_yolo.names`): nothing here can contain ``/``.
    """

    prefix: str
    task: str
    project: str
    model_name: str
    run_id: str

    @classmethod
    def of(cls, prefix: str, names: Mapping[str, Any], run_id: str | None = None) -> RunLocation:
        """From a ``run:`` config section or a run record (``task``, ``project``, ``model_name``)."""
        return cls(prefix.rstrip("/") + "/", str(names["task"]), str(names["project"]), str(names["model_name"]),
                   str(run_id if run_id is not None else names["run_id"]))

    @property
    def tail(self) -> str:
        """The run's path below any prefix, ending in ``/``."""
        return f"{self.task}/{self.project}/{self.model_name}/{self.run_id}/"

    @property
    def url(self) -> str:
        """``s3://…/<task>/<project>/<model_name>/<run_id>/``."""
        return self.prefix + self.tail


def index_key(run_id: str) -> str:
    """Key of a run's index record, relative to the index URL."""
    return f"{INDEX_RUNS}{run_id}.json"


def allocated_hours(record: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """GPU-hours and CPU-hours of a run: nodes x GPUs (CPUs) per node x wall time, summed over
    its attempts, as its Slurm allocation asked for them (``config.slurm``: one task per node
    with ``cpus_per_task`` CPUs and ``gpus`` GPUs, the launcher's shape).

    ``(None, None)`` when no attempt has both a start and an end: the run is not metered
    rather than metered as zero.
    """
    slurm = (record.get("config") or {}).get("slurm") or {}
    try:
        nodes, gpus, cpus = int(slurm.get("nodes") or 1), int(slurm.get("gpus") or 0), int(slurm.get("cpus_per_task") or 1)
    except (TypeError, ValueError):
        return None, None
    wall, timed = 0.0, False
    for attempt in record.get("attempts") or []:
        if not isinstance(attempt, dict):
            continue
        start, end = parse_time(attempt.get("start")), parse_time(attempt.get("end"))
        if start is not None and end is not None and end >= start:
            wall += (end - start).total_seconds()
            timed = True
    if not timed:
        return None, None
    hours = wall / 3600.0
    return round(nodes * gpus * hours, 6), round(nodes * cpus * hours, 6)


def stored_totals(objects: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``{"bytes", "objects"}`` of a listing of a run's folder in the store (S3's ``Size`` per
    object): what the index records as what the run costs to keep. A listing, not the
    manifest: it also counts ``run.json``, the manifest and every attempt's record, including
    those an earlier attempt uploaded."""
    listed = list(objects)
    return {"bytes": sum(int(obj.get("Size") or 0) for obj in listed), "objects": len(listed)}


def index_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The flat index record for a ``run.json`` record (what ``runs list`` filters on).

    ``bytes`` and ``objects`` are ``None`` (unknown, not zero) until the run is in the store:
    whoever ships it fills them in from a listing (:func:`stored_totals`).
    """
    attempts = record.get("attempts") or []
    gpu_hours, cpu_hours = allocated_hours(record)
    env = record.get("environment") or {}
    train = (record.get("config") or {}).get("train") or {}
    dataset = record.get("dataset") or {}
    metrics = record.get("metrics") or {}
    return {
        "run_id": record.get("run_id"),
        "sweep_id": record.get("sweep_id"),
        "task": record.get("task"),
        "project": record.get("project"),
        "model_name": record.get("model_name"),
        "dataset_version": dataset.get("version"),
        "dataset_fingerprint": dataset.get("fingerprint"),
        "user": record.get("user"),
        "gpu": env.get("gpu"),
        "submitted_at": record.get("submitted_at"),
        "start": attempts[0].get("start") if attempts else None,
        "end": attempts[-1].get("end") if attempts else None,
        "attempts": len(attempts),
        "end_state": record.get("end_state") or record.get("status"),
        "job_id": (record.get("slurm") or {}).get("job_id"),
        "map50": metrics.get("map50"),
        "map50_95": metrics.get("map50_95"),
        "precision": metrics.get("precision"),
        "recall": metrics.get("recall"),
        "epochs_done": metrics.get("epochs_done"),
        **fitness_of(record.get("task"), metrics),
        "metrics": metric_values(metrics),
        "hparams": {k: train[k] for k in KEY_HPARAMS if k in train},
        "archive_url": record.get("archive_url"),
        "reproduces": record.get("reproduces"),
        "bytes": None,
        "objects": None,
        "gpu_hours": gpu_hours,
        "cpu_hours": cpu_hours,
    }
