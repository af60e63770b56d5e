"""Store layout: where a run lives, and the index record that finds it.

::

    <archive prefix>/<task>/<project>/<model_name>/<run_id>/   the run folder as is, plus
        run.json        the record, with the end state          (uploaded last: commit marker)
        MANIFEST.json   size + sha256 of every other file        (uploaded last: commit marker)
        attempts/attempt-<n>.json   run.json as attempt n ended (requeued runs have several)
    <index_url>runs/<run_id>.json                                one index record per run
    <index_url>pending/<run_id>/<utc>-<rand>.json                an update not compacted yet
    <index_url>parquet/quarter=YYYY-Qn/runs.parquet                compacted records, by quarter

Per-run index objects mean concurrent epilogs never write the same key; compaction folds the
pending updates into the quarterly Parquet files with conditional writes
(:mod:`slurm_yolo.archive.index_store`, :mod:`slurm_yolo.archive.index_compact`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from slurm_yolo.archive.manifest import MANIFEST as MANIFEST  # where readers of the layout look for it
from slurm_yolo.record import fitness_of, metric_values
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


def index_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The flat index record for a ``run.json`` record (what ``runs list`` filters on)."""
    attempts = record.get("attempts") or []
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
    }
