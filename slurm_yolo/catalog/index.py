"""The catalog's side of the run index: find it (``locate``), read it (``load_records``, from
:mod:`slurm_yolo.catalog.scan`), and rebuild it from the archives. The index's format and every
write to it are on the write side (:mod:`slurm_yolo.archive.index_store`: the epilog's
update; :mod:`slurm_yolo.archive.index_compact`: compaction, migration); the names callers
use from there are re-exported here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from slurm_yolo.archive import layout, s5cmd
from slurm_yolo.archive.index_compact import compact, migrate, remove_from_index, replace_all  # noqa: F401
from slurm_yolo.archive.index_location import IndexLocation
from slurm_yolo.archive.index_store import (  # noqa: F401 - re-exported for the catalog's callers
    PENDING, PENDING_GRACE_S, add_to_index, get_object, list_keys, pending_key, read_pending,
)
from slurm_yolo.catalog.scan import load_records  # noqa: F401 - re-exported
from slurm_yolo.archive.s5cmd import check_s5cmd  # noqa: F401 - re-exported
from slurm_yolo.store import Store, error_code, join_url, split_url, store_error  # noqa: F401 - re-exported
from slurm_yolo.errors import ConfigError
from slurm_yolo.names import NAME_RE
from slurm_yolo.record import fitness_candidates, read_metrics
from slurm_yolo.runfolder import RESULTS_CSV, RUN_JSON
from slurm_yolo.site import site_config_path

# The name an index location had when it was this package's only handle (test fixtures and
# benchmarks still use it).
Catalog = IndexLocation

def locate(index_url: str | None = None, env: Mapping[str, str] | None = None) -> IndexLocation:
    """The index a user's command works on.

    The index URL is ``index_url`` (``--index``), else ``$SLURM_YOLO_INDEX``, else ``index_url``
    in the site config (``$SLURM_YOLO_SITE_CONFIG`` or ``/etc/slurm-yolo/site.yaml``). The
    store connection comes from the environment (:meth:`Store.from_env`); the endpoint falls
    back to the site config's ``store.endpoint_url`` (users of a MinIO site need not set it).

    Raises:
        ConfigError: no index URL anywhere, or not an ``s3://`` URL.
    """
    env = os.environ if env is None else env
    site_path = site_config_path(dict(env))
    site = _read_site(site_path)
    url = index_url or env.get("SLURM_YOLO_INDEX") or site.get("index_url")
    if not url:
        raise ConfigError("no index URL: pass --index s3://BUCKET/index/, set SLURM_YOLO_INDEX, "
                          f"or ask your admin to set index_url in {site_path}")
    split_url(url)  # validates
    site_store = site.get("store") if isinstance(site.get("store"), dict) else {}
    endpoint = env.get("S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL") or site_store.get("endpoint_url")
    # Whether the store's conditional writes are atomic is the admin's statement about the
    # site's store; a user pointing elsewhere (another endpoint) gets the safe default.
    atomic = site_store.get("atomic_conditional_writes") is True and (
        endpoint == site_store.get("endpoint_url"))
    prefix = site.get("allowed_prefix") if isinstance(site.get("allowed_prefix"), str) else None
    return IndexLocation.at(Store.from_env(env, endpoint_url=endpoint, atomic_conditional_writes=atomic), url, prefix)

def storage_rates(env: Mapping[str, str] | None = None) -> dict[str, float]:
    """The site's ``storage_cost_per_gb_month`` (storage class -> $/GB-month), ``{}`` when unset
    or when there is no site config: a public setting, read the way :func:`locate` reads URLs."""
    site = _read_site(site_config_path(dict(os.environ if env is None else env)))
    rates = site.get("storage_cost_per_gb_month")
    if not isinstance(rates, dict):
        return {}
    return {str(k).upper(): float(v) for k, v in rates.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _read_site(path: str) -> dict[str, Any]:
    # Only public settings are read here (URLs); the site's credentials file is root-only by design.
    try:
        with open(path, encoding="utf-8") as f:
            site = yaml.safe_load(f) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read the site config {path}: {e}; ask your admin, or pass --index") from e
    return site if isinstance(site, dict) else {}

def with_task_metrics(run: dict[str, Any], results_csv: Path) -> dict[str, Any]:
    """``run`` with its metrics read again from ``results_csv`` by its task's metric, if its
    record predates ``fitness_metric`` (a classify run's then had no metric at all)."""
    metrics = run.get("metrics")
    if isinstance(metrics, dict) and metrics.get("fitness_metric"):
        return run
    fresh = read_metrics(results_csv, fitness_candidates(run, with_task=True))
    return {**run, "metrics": {**(metrics if isinstance(metrics, dict) else {}), **fresh}} if fresh else run


def _add_sizes(store: Store, roots: Sequence[str], records: dict[str, dict[str, Any]],
               folders: Mapping[str, tuple[str, str]]) -> None:
    """Give each rebuilt record the ``bytes`` and ``objects`` the store holds in the folder its
    run.json was found in (one listing per root: what the archiver records after each ship,
    :func:`slurm_yolo.archive.layout.stored_totals`)."""
    by_folder = {folder: records[run_id] for run_id, folder in folders.items() if run_id in records}
    for rec in by_folder.values():
        rec.update(bytes=0, objects=0)
    client = store.boto3_client()
    for root in roots:
        bucket, prefix = split_url(root.rstrip("/") + "/")
        for obj in list_keys(client, bucket, prefix):
            key, cut = obj["Key"], obj["Key"].find("/")
            while cut >= 0:  # the run folder is some "/"-ended head of the key
                rec = by_folder.get((bucket, key[:cut + 1]))
                if rec is not None:
                    rec["bytes"] += int(obj.get("Size") or 0)
                    rec["objects"] += 1
                    break
                cut = key.find("/", cut + 1)


def rebuild(cat: IndexLocation, archive_roots: Sequence[str] = (), *, force: bool = False) -> int:
    """Recreate the index from the ``run.json`` files in the store; return the number of runs.

    Downloads every ``run.json`` (and ``results.csv``, for records that predate the task
    metrics: :func:`with_task_metrics`) under the roots with s5cmd, writes each run's
    ``runs/<run_id>.json`` and rewrites every quarterly file (pending updates written later
    still win). Runs whose ``run.json`` is not under the roots disappear from the index only
    with ``force``: a mistyped root must not empty the catalog.

    Args:
        cat: the catalog.
        archive_roots: ``s3://bucket/prefix`` URLs to search; default: the index's bucket.
        force: drop the runs the index lists now whose ``run.json`` was not found.

    Raises:
        StoreError: s5cmd failed to list/download or upload.
        ConfigError: the rebuilt index would drop runs, and ``force`` is not set (nothing changed).
    """
    roots = list(archive_roots) or [f"s3://{cat.bucket}/"]
    records: dict[str, dict] = {}
    folders: dict[str, tuple[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="slurm-yolo-rebuild-") as tmp:
        for n, root in enumerate(roots):
            split_url(root)
            dest = Path(tmp, "in", str(n))
            result = s5cmd.run(s5cmd.base_argv(cat.store) + ["cp", join_url(root, "*", RUN_JSON), f"{dest}/"],
                               cat.store)
            check_s5cmd(result, f"download run.json files under {root}", allow_empty=True)
            # Beside them, each results.csv: a run.json written before runs recorded their task's
            # metric gets it from there (only those are read).
            result = s5cmd.run(s5cmd.base_argv(cat.store) + ["cp", join_url(root, "*", RESULTS_CSV), f"{dest}/"],
                               cat.store)
            check_s5cmd(result, f"download results.csv files under {root}", allow_empty=True)
            for path in sorted(dest.rglob(RUN_JSON)):
                try:
                    run = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue  # a torn or foreign file: not a run
                # run.json is written by the user's job: a run ID that is not a safe name is not ours.
                if isinstance(run, dict) and isinstance(run.get("run_id"), str) and NAME_RE.fullmatch(run["run_id"]):
                    records[run["run_id"]] = layout.index_record(with_task_metrics(run, path.parent / RESULTS_CSV))
                    # s5cmd keeps the keys' folders below the root: where this run.json lies
                    bucket, prefix = split_url(root.rstrip("/") + "/")
                    folders[run["run_id"]] = (bucket, f"{prefix}{path.parent.relative_to(dest).as_posix()}/")
        _add_sizes(cat.store, roots, records, folders)
        if records:
            out = Path(tmp, "out")
            out.mkdir()
            for run_id, rec in records.items():
                (out / Path(layout.index_key(run_id)).name).write_text(json.dumps(rec, sort_keys=True, default=str))
            dest = join_url(cat.index_url, layout.INDEX_RUNS) + "/"
            argv = ["cp", "--content-type", "application/json", f"{out}/*", dest]
            result = s5cmd.run(s5cmd.base_argv(cat.store) + argv, cat.store)
            check_s5cmd(result, "write index records")
    return replace_all(cat, records, force=force)
