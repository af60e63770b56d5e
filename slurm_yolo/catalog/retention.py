"""Keeping the store affordable: bucket lifecycle rules and keep-the-best pruning."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

from slurm_yolo.archive import layout, s5cmd
from slurm_yolo.store import Store, join_url, split_url
from slurm_yolo.catalog.index import IndexLocation, check_s5cmd, error_code, remove_from_index, store_error
from slurm_yolo.catalog.query import field_value, parse_time
from slurm_yolo.catalog.runs import archive_url
from slurm_yolo.errors import ConfigError, StoreError
from slurm_yolo.tasks import LOWER_IS_BETTER, metric_field

# What ``store prune`` ranks by when no --metric is given: each run's own task metric.
FITNESS = "fitness"

RULE_ID = "slurm-yolo-runs"
# s5cmd multipart uploads killed at the epilog's deadline leave invisible, billed parts behind.
ABORT_MULTIPART_DAYS = 7


def lifecycle_rule(prefix: str, *, ia_after: int | None = 30, expire_after: int | None = None,
                   archive_after: int | None = None) -> dict[str, Any]:
    """The bucket lifecycle rule for archived runs under ``prefix`` (pure).

    Args:
        prefix: key prefix of the archived runs ("" for the whole bucket).
        ia_after: days until STANDARD_IA (``None``: never).
        expire_after: days until deletion; exclusive with ``archive_after``.
        archive_after: days until GLACIER.

    Raises:
        ConfigError: both expire and archive, or days out of order.
    """
    if expire_after and archive_after:
        raise ConfigError("--expire-after and --archive-after exclude each other: a run is either deleted or archived")
    later = expire_after or archive_after
    if ia_after and later and later <= ia_after:
        raise ConfigError(f"--ia-after {ia_after}d must be earlier than the expire/archive age {later}d")
    rule: dict[str, Any] = {"ID": RULE_ID, "Status": "Enabled", "Filter": {"Prefix": prefix},
                            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_DAYS}}
    transitions = []
    if ia_after:
        transitions.append({"Days": ia_after, "StorageClass": "STANDARD_IA"})
    if archive_after:
        transitions.append({"Days": archive_after, "StorageClass": "GLACIER"})
    if transitions:
        rule["Transitions"] = transitions
    if expire_after:
        rule["Expiration"] = {"Days": expire_after}
    return rule


def check_rule_spares_index(bucket: str, rule: Mapping[str, Any], index_url: str) -> None:
    """Refuse a rule that would also age out the index (it is rewritten constantly and must never expire)."""
    index_bucket, index_prefix = split_url(index_url)
    prefix = rule["Filter"]["Prefix"]
    if bucket == index_bucket and index_prefix.startswith(prefix):
        raise ConfigError(f"a lifecycle rule on s3://{bucket}/{prefix} would also expire the index {index_url}; "
                          "pass --prefix with the archive prefix only (e.g. --prefix runs/)")


def read_lifecycle(store: Store, bucket: str) -> list[dict[str, Any]]:
    """The bucket's current lifecycle rules (``[]`` when it has none)."""
    client = store.boto3_client()
    try:
        return client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except Exception as e:
        if error_code(e) == "NoSuchLifecycleConfiguration":
            return []
        raise store_error("read lifecycle rules of", f"s3://{bucket}", e) from e


def apply_lifecycle(store: Store, bucket: str, rule: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Put ``rule`` on the bucket, replacing an earlier rule with its ID and keeping the others; return all rules."""
    rules = [r for r in read_lifecycle(store, bucket) if r.get("ID") != rule["ID"]] + [dict(rule)]
    try:
        store.boto3_client().put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    except Exception as e:
        if error_code(e) == "NotImplemented" and any(r.get("Transitions") for r in rules):
            # SeaweedFS (and other stores with one storage class) accept expiry rules only.
            raise StoreError(f"put lifecycle rules on s3://{bucket}: this store does not implement storage-class "
                             "transitions (STANDARD_IA, GLACIER); apply an expiry only: --ia-after none "
                             "--expire-after 180d") from e
        raise store_error("put lifecycle rules on", f"s3://{bucket}", e) from e
    return read_lifecycle(store, bucket)


def parse_keep(text: str) -> tuple[float, bool]:
    """``'10%'`` → ``(10.0, True)``; ``'5'`` → ``(5.0, False)``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", text)
    if not m or (m.group(2) and float(m.group(1)) > 100):
        raise ConfigError(f"--keep-top {text!r}: expected a count like 10 or a percentage like 10%")
    return float(m.group(1)), bool(m.group(2))


def run_time(record: Mapping[str, Any]) -> datetime | None:
    """When a run last did something: its end, else start, else submission."""
    return parse_time(record.get("end")) or parse_time(record.get("start")) or parse_time(record.get("submitted_at"))


@dataclass(frozen=True)
class PrunePlan:
    """Which old runs go and which stay, per group (pure data; see :func:`plan_prune`)."""

    metric: str
    delete: tuple[dict[str, Any], ...]
    keep: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        def short(record: Mapping[str, Any]) -> dict[str, Any]:
            return {"run_id": record.get("run_id"), "task": record.get("task"), "project": record.get("project"),
                    "model_name": record.get("model_name"), "fitness_metric": record.get("fitness_metric"),
                    self.metric: field_value(dict(record), self.metric), "archive_url": record.get("archive_url"),
                    "bytes": record.get("bytes")}

        return {"metric": self.metric, "delete": [short(record) for record in self.delete],
                "keep": [short(record) for record in self.keep]}


def freed_bytes(plan: PrunePlan) -> tuple[int, int]:
    """What deleting ``plan`` frees: the bytes the index records for its runs, and how many of
    them have no recorded size (indexed before sizes were; not guessed)."""
    sizes = [record.get("bytes") for record in plan.delete]
    known = [int(size) for size in sizes if isinstance(size, (int, float)) and not isinstance(size, bool)]
    return sum(known), len(sizes) - len(known)


def plan_prune(records: Sequence[Mapping[str, Any]], *, metric: str | None = None, keep_top: tuple[float, bool],
               older_than: datetime, project: str | None = None) -> PrunePlan:
    """Among runs older than ``older_than``, keep the top ones by ``metric`` in each group.

    Groups are (task, project, model) — runs are only comparable on the same task and model —
    or, with ``project``, that whole project (each task of it apart when ranking by the task's
    metric: a top1 and a mAP are not comparable). Without ``metric`` each run is ranked by
    its task's own metric (``fitness``: ``top1`` for classify, mask mAP50-95 for segment).
    Runs without a value rank last, so one is never kept over a run with a value. A metric
    where smaller wins (:data:`slurm_yolo.tasks.LOWER_IS_BETTER`, e.g. depth's ``abs_rel``)
    ranks ascending.
    Newer runs are neither kept nor deleted: they are not part of the plan. A percentage is
    of the old runs present now (rounded up), so repeating a percentage prune thins the
    survivors again; a count (``keep_top=(10, False)``) is idempotent, for scheduled pruning.
    """
    count, percent = keep_top
    name = metric or FITNESS
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for record in records:
        if project is not None and record.get("project") != project:
            continue
        when = run_time(record)
        if when is None or when >= older_than:
            continue
        if project is None:
            key: Any = (record.get("task"), record.get("project"), record.get("model_name"))
        else:
            key = (project, record.get("task")) if metric is None else project
        groups.setdefault(key, []).append(record)
    delete, keep = [], []
    for members in groups.values():
        ranked = sorted(members, key=lambda record: (-_score(record, name), str(record.get("run_id"))))
        n = math.ceil(len(ranked) * count / 100) if percent else min(len(ranked), int(count))
        keep += ranked[:n]
        delete += ranked[n:]
    by_id = lambda record: str(record.get("run_id"))  # noqa: E731
    return PrunePlan(name, tuple(sorted(delete, key=by_id)), tuple(sorted(keep, key=by_id)))


def lower_is_better(metric: str, record: Mapping[str, Any]) -> bool:
    """Whether a smaller ``metric`` (a field name, or ``fitness`` of ``record``'s own column) is better."""
    if metric == FITNESS:
        column = record.get("fitness_metric")
        field = metric_field(column) if isinstance(column, str) else None
    else:
        field = metric.rpartition(".")[2]
    return field in LOWER_IS_BETTER


def _score(record: Mapping[str, Any], metric: str) -> float:
    """Higher is better; ``-inf`` without a value (ranks last in either direction)."""
    value = field_value(dict(record), metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return -math.inf
    return -float(value) if lower_is_better(metric, record) else float(value)


def execute_prune(cat: IndexLocation, plan: PrunePlan) -> int:
    """Delete the planned runs: every archived object, their index records, their rows in the index.

    Objects go first (one s5cmd batch); the index is rewritten only when all of them are
    gone, so a failure leaves the runs listed and re-running the prune finishes the job.

    Returns:
        the number of runs deleted.
    """
    if not plan.delete:
        return 0
    commands = []
    for record in plan.delete:
        commands.append(f"rm {s5cmd.quote_run_arg(archive_url(record) + '*')}")
        commands.append(f"rm {s5cmd.quote_run_arg(join_url(cat.index_url, layout.index_key(record['run_id'])))}")
    result = s5cmd.run(s5cmd.base_argv(cat.store) + ["run"], cat.store, stdin_text="\n".join(commands) + "\n")
    check_s5cmd(result, f"delete {len(plan.delete)} runs (re-run the prune to finish)", allow_empty=True)
    remove_from_index(cat, plan.delete)
    return len(plan.delete)
