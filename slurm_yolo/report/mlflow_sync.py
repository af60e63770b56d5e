"""``slurm-yolo mlflow sync``: register every archived run in an MLflow tracking server.

One MLflow run per archived run (OOM-killed, timed-out and failed ones included), in the
experiment named after the run's project:

- params from the archived ``args.yaml`` (logged once: MLflow params are immutable);
- per-epoch metrics from ``results.csv`` with ``step=epoch`` (only epochs not logged yet):
  every column the run logged, whatever its task (``metrics/accuracy_top1``, ``metrics/mAP50-95_M``
  for ``metrics/mAP50-95(M)``, ``train/l1_loss``), and ``fitness``: the run's task metric, so runs
  of different tasks share one key to chart;
- tags: end state, user, Slurm job, run ID, sweep, task, its metric column, model, archive URL,
  and the ``slurm-yolo runs fetch`` command;
- nothing is uploaded: the archive in the store *is* the artifact store.

Why ``artifact_uri`` is a tag here: MLflow's ``CreateRun`` has no artifact-location field; a
server always gives a run ``<experiment artifact_location>/<run uuid>/artifacts``. So each
project's experiment is created with ``artifact_location`` = the archive prefix the runs
share, and every run carries ``slurm_yolo.artifact_uri`` = its own archive folder (also in
its description, which the MLflow UI shows). Copying the files into MLflow's layout would
store every run twice.

Idempotent and timer-safe: an MLflow run is found by its ``slurm_yolo.run_id`` tag (one
search per experiment, not per run), left alone when the tag ``slurm_yolo.digest`` matches
the index record, and otherwise updated in place. Two syncs at once can at worst create a
duplicate MLflow run; run it from one timer.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from slurm_yolo.store import split_url
from slurm_yolo.catalog.index import IndexLocation, get_object, load_records
from slurm_yolo.timeparse import parse_time
from slurm_yolo.catalog.runs import PER_RUN_ARGS
from slurm_yolo.runfolder import ARGS_YAML, RESULTS_CSV
from slurm_yolo.errors import ConfigError, SlurmYoloError
from slurm_yolo.report import pages
from slurm_yolo.report.build import task_selection, yaml_mapping

TAG = "slurm_yolo."
# MLflow run status for each end state (anything unknown: the run is still going).
STATUS = {"COMPLETED": "FINISHED", "FAILED": "FAILED", "OUT_OF_MEMORY": "FAILED", "NODE_FAIL": "FAILED",
          "TIMEOUT": "KILLED", "CANCELLED": "KILLED", "PREEMPTED": "KILLED"}
# MLflow's per-request limits for log_batch.
MAX_METRICS, MAX_PARAMS_TAGS = 1000, 100
MAX_VALUE = 6000  # MLflow's param/tag value limit


@dataclass(frozen=True)
class SyncResult:
    """What a sync did. ``errors``: ``{run_id: message}``, retried next sync."""

    tracking_uri: str
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def mlflow_key(name: str) -> str:
    """A results.csv column or args.yaml key as an MLflow key: ``metrics/mAP50(B)`` → ``metrics/mAP50_B``.

    MLflow allows letters, digits, ``_ - . /`` and space (``:`` too since 2.x, not on Windows)
    and refuses a key that is not its own normal path (``a//b``, ``./a``, ``a/..``); older
    servers refuse ``(`` ``)``. Each run of other characters becomes ``_``, a part loses its
    leading dots and empty parts are dropped, so one column always gives the same key on every server.
    """
    parts = [re.sub(r"[^A-Za-z0-9_\-. ]+", "_", part).strip("_ ").lstrip(".") for part in str(name).split("/")]
    key = "/".join(p for p in parts if p)
    return key[:250] or "_"


def params_from_args(args: Mapping[str, Any]) -> dict[str, str]:
    """``args.yaml`` as MLflow params (strings, cut to MLflow's limit); per-run folder names left out."""
    return {mlflow_key(k): str(v)[:MAX_VALUE] for k, v in sorted(args.items()) if k not in PER_RUN_ARGS}


FITNESS_KEY = "fitness"


def epoch_metrics(cols: Mapping[str, Sequence[float | None]], after: int = 0,
                  fitness_column: str | None = None, fitness_after: int | None = None) -> list[tuple[str, float, int]]:
    """``(key, value, epoch)`` for every numeric cell of ``results.csv`` with epoch > ``after``;
    the ``fitness_column``'s values once more under :data:`FITNESS_KEY`, with epoch >
    ``fitness_after`` (default ``after``)."""
    epochs = cols.get("epoch") or []
    named = [(mlflow_key(name), values, after) for name, values in cols.items() if name != "epoch"]
    if fitness_column and fitness_column in cols:
        named.append((FITNESS_KEY, cols[fitness_column], after if fitness_after is None else fitness_after))
    out = []
    for key, values, since in named:
        for epoch, value in zip(epochs, values):
            if epoch is not None and value is not None and int(epoch) > since:
                out.append((key, float(value), int(epoch)))
    return out


def run_tags(record: Mapping[str, Any], digest: str, epochs_logged: int,
             fitness_column: str | None = None) -> dict[str, str]:
    """The tags of the MLflow run for an index record (MLflow's own ``mlflow.*`` ones included)."""
    run_id, url = str(record["run_id"]), str(record["archive_url"])
    tags = {
        f"{TAG}run_id": run_id, f"{TAG}end_state": record.get("end_state"), f"{TAG}user": record.get("user"),
        f"{TAG}slurm_job_id": record.get("job_id"), f"{TAG}sweep_id": record.get("sweep_id"),
        f"{TAG}task": record.get("task"), f"{TAG}fitness_metric": fitness_column,
        f"{TAG}project": record.get("project"),
        f"{TAG}model_name": record.get("model_name"), f"{TAG}attempts": record.get("attempts"),
        f"{TAG}artifact_uri": url, f"{TAG}digest": digest, f"{TAG}epochs_logged": epochs_logged,
        "mlflow.user": record.get("user"), "mlflow.runName": run_id,
        "mlflow.note.content": f"Archived run `{run_id}` ({record.get('end_state')}).\n\n"
                               f"Artifacts: `{url}` (not copied into MLflow).\n\n"
                               f"Fetch: `slurm-yolo runs fetch {run_id} --to ./{run_id}`",
    }
    return {k: str(v)[:MAX_VALUE] for k, v in tags.items() if v is not None}


def _millis(text: Any) -> int | None:
    when = parse_time(text)
    return int(when.timestamp() * 1000) if when else None


def sync(cat: IndexLocation, *, tracking_uri: str | None = None, experiment_prefix: str = "",
         allowed_prefix: str | None = None, client=None, s3=None) -> SyncResult:
    """Register or update every archived run in the MLflow tracking server.

    Args:
        cat: the catalog.
        tracking_uri: the server (default: ``$MLFLOW_TRACKING_URI``, MLflow's convention).
        experiment_prefix: experiment name = prefix + project.
        allowed_prefix: as for the portal: a run whose archive is outside its user's prefix is skipped.
        client: an ``MlflowClient`` (default: one for ``tracking_uri``).
        s3: a boto3 client (default: the catalog store's).

    Raises:
        ConfigError: MLflow is not installed, or no tracking URI. StoreError: the index cannot be read.
    """
    import os

    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise ConfigError("slurm-yolo mlflow needs MLflow: pip install 'slurm-yolo[mlflow]'") from e
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError("no MLflow server: set MLFLOW_TRACKING_URI (e.g. http://mlflow.example:5000) "
                          "or pass --tracking-uri")
    client = client or MlflowClient(tracking_uri=uri)
    s3 = s3 or cat.store.boto3_client()
    records = sorted(load_records(cat, s3), key=lambda record: str(record.get("run_id")))
    skipped = {str(record.get("run_id")): why for record in records if (why := pages.linkable(record, allowed_prefix))}
    selection = task_selection()
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    errors: dict[str, str] = {}
    experiments: dict[str, tuple[str, dict[str, Any]]] = {}
    for record in records:
        run_id = str(record["run_id"])
        if run_id in skipped:
            continue
        try:
            name = experiment_prefix + str(record.get("project"))
            if name not in experiments:
                experiments[name] = _experiment(client, name, record)
            exp_id, existing = experiments[name]
            outcome = _sync_one(client, s3, exp_id, existing.get(run_id), record, selection)
            counts[outcome] += 1
        except SlurmYoloError as e:
            errors[run_id] = str(e)
        except Exception as e:  # MlflowException, connection errors: one run must not stop the rest
            errors[run_id] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    return SyncResult(uri, skipped=skipped, errors=errors, **counts)


def _experiment(client, name: str, record: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(experiment id, {run_id: MLflow run})`` for ``name``, created if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        # The archive prefix of the project's runs (the folder above the run IDs).
        url = str(record["archive_url"]).rstrip("/").rsplit("/", 1)[0] + "/"
        exp_id = client.create_experiment(name, artifact_location=url,
                                          tags={f"{TAG}note": "runs registered by slurm-yolo mlflow sync"})
        return exp_id, {}
    runs: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG}run_id` != ''",
                                  max_results=1000, page_token=token)
        for r in page:
            runs.setdefault(r.data.tags.get(f"{TAG}run_id"), r)
        token = page.token
        if not token:
            break
    return exp.experiment_id, runs


def _read(s3, url: str) -> bytes | None:
    bucket, key = split_url(url)
    got = get_object(s3, bucket, key)
    return got[0] if got else None


def _sync_one(client, s3, exp_id: str, existing, record: Mapping[str, Any], selection: Mapping[str, str]) -> str:
    from mlflow.entities import Metric, Param, RunTag

    digest = pages.record_digest(record)
    if existing is not None and existing.data.tags.get(f"{TAG}digest") == digest:
        return "unchanged"
    url = str(record["archive_url"])
    args = yaml_mapping(_read(s3, url + ARGS_YAML))
    csv_bytes = _read(s3, url + RESULTS_CSV) or b""
    cols = pages.parse_results_csv(csv_bytes.decode("utf-8", "replace"))
    column = pages.fitness_column(record, list(cols), selection) if cols else record.get("fitness_metric")
    if existing is None:
        run = client.create_run(exp_id, start_time=_millis(record.get("start") or record.get("submitted_at")),
                                run_name=str(record["run_id"]))
        mlflow_id, have_params, logged = run.info.run_id, {}, 0
    else:
        mlflow_id, have_params = existing.info.run_id, existing.data.params
        logged = int(existing.data.tags.get(f"{TAG}epochs_logged") or 0)
    # A run synced before runs named their task metric has every epoch but no fitness: all of
    # its epochs' fitness go now (the other keys only from the new epochs on).
    fitness_after = logged if existing is None or f"{TAG}fitness_metric" in existing.data.tags else 0
    params = [Param(k, v) for k, v in params_from_args(args).items() if k not in have_params]
    metrics = [Metric(k, v, _millis(record.get("end")) or int(time.time() * 1000), step)
               for k, v, step in epoch_metrics(cols, after=logged, fitness_column=column,
                                               fitness_after=fitness_after)]
    last = max([logged] + [int(e) for e in cols.get("epoch") or [] if e is not None])
    tags = [RunTag(k, v) for k, v in run_tags(record, digest, last, column).items()]
    for i in range(0, len(params), MAX_PARAMS_TAGS):
        client.log_batch(mlflow_id, params=params[i:i + MAX_PARAMS_TAGS])
    for i in range(0, len(metrics), MAX_METRICS):
        client.log_batch(mlflow_id, metrics=metrics[i:i + MAX_METRICS])
    # Tags last, the digest among them: a sync cut short is redone next time, not marked done.
    for i in range(0, len(tags), MAX_PARAMS_TAGS):
        client.log_batch(mlflow_id, tags=tags[i:i + MAX_PARAMS_TAGS])
    status = STATUS.get(str(record.get("end_state")))
    if status:
        # MLflow writes "View run ... at: URL" on stdout here; stdout is for --json alone.
        with contextlib.redirect_stdout(sys.stderr):
            client.set_terminated(mlflow_id, status=status, end_time=_millis(record.get("end")))
    return "created" if existing is None else "updated"
