"""`slurm-yolo mlflow sync` against a real `mlflow server` (SQLite backend, loopback), read
back with MLflow's own client."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.helpers.report_seed import allowed, seed, rewrite_index
from slurm_yolo.catalog.index import Catalog
from slurm_yolo.cli import main

mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def cat(moto_server):
    """A catalog on a fresh moto bucket: what is under test is the MLflow side, so one S3 server
    is enough (test_build.py runs on both); an MLflow server start costs ~20 s."""
    store = moto_server.store()
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    store.boto3_client().create_bucket(Bucket=bucket)
    return Catalog(store, f"s3://{bucket}/index/")


def test_sync_registers_every_run_once(mlflow_server, cat, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    store = cat.store
    client = store.boto3_client()
    lines = seed(client, cat)
    monkeypatch.setenv("AWS_ENDPOINT_URL", store.endpoint_url)
    for k, v in store.keys:
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SLURM_YOLO_INDEX", cat.index_url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    prefix = f"{cat.bucket}-"
    argv = ["mlflow", "sync", "--json", "--experiment-prefix", prefix, "--allowed-prefix", allowed(cat)]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["created"] == 4 and first["errors"] == {} and list(first["skipped"]) == [lines["foreign"]["run_id"]]

    ml = MlflowClient(tracking_uri=mlflow_server)
    exp = ml.get_experiment_by_name(prefix + "pcb")
    runs = {r.data.tags["slurm_yolo.run_id"]: r for r in ml.search_runs([exp.experiment_id])}
    assert set(runs) == {lines["good"]["run_id"], lines["oom"]["run_id"]}
    oom = runs[lines["oom"]["run_id"]]
    assert oom.info.status == "FAILED" and oom.data.tags["slurm_yolo.end_state"] == "OUT_OF_MEMORY"
    assert oom.data.tags["slurm_yolo.user"] == "ana" and oom.data.tags["slurm_yolo.slurm_job_id"] == "42"
    assert oom.data.tags["slurm_yolo.sweep_id"] == "sw1"
    assert oom.data.tags["slurm_yolo.artifact_uri"] == lines["oom"]["archive_url"]
    assert oom.data.params["lr0"] == "0.001" and "save_dir" not in oom.data.params
    history = ml.get_metric_history(oom.info.run_id, "metrics/mAP50-95_B")
    assert [(m.step, m.value) for m in history] == [(1, 0.02), (2, 0.1), (3, 0.3)]
    # Nothing uploaded: the store holds only what the seed wrote, and MLflow's run lives under the archive prefix.
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=cat.bucket)["Contents"]]
    assert not [k for k in keys if oom.info.run_id in k or "mlflow" in k]
    assert oom.info.artifact_uri.startswith(lines["oom"]["archive_url"].rsplit("/", 2)[0] + "/")

    # again: nothing changes; then one run gets a new epoch (requeued and finished)
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == 4
    from tests.helpers.catalog_seed import results_csv

    base = lines["oom"]["archive_url"].split("/", 3)[3]
    client.put_object(Bucket=cat.bucket, Key=base + "results.csv", Body=results_csv([0.02, 0.1, 0.3, 0.45]))
    lines["oom"].update(end_state="COMPLETED", attempts=3, map50_95=0.45)
    rewrite_index(client, cat, lines)
    assert main(argv) == 0
    third = json.loads(capsys.readouterr().out)
    assert third["updated"] == 1 and third["created"] == 0 and third["unchanged"] == 3
    again = ml.get_run(oom.info.run_id)
    assert again.info.status == "FINISHED" and again.data.tags["slurm_yolo.end_state"] == "COMPLETED"
    history = ml.get_metric_history(oom.info.run_id, "metrics/mAP50-95_B")
    assert [(m.step, m.value) for m in history] == [(1, 0.02), (2, 0.1), (3, 0.3), (4, 0.45)]  # no duplicates
    assert len(ml.search_runs([exp.experiment_id])) == 2


def test_sync_without_a_server_says_how(monkeypatch, capsys):
    monkeypatch.setenv("SLURM_YOLO_INDEX", "s3://nowhere/index/")
    assert main(["mlflow", "sync"]) == 2
    assert "MLFLOW_TRACKING_URI" in capsys.readouterr().err


def test_sync_logs_every_metric_column_of_each_task_and_its_tag(mlflow_server, cat):
    """Runs of classify, segment and depth: every results.csv column per epoch under its
    MLflow key, the task metric once more as ``fitness``, the task and its column as tags."""
    from mlflow.tracking import MlflowClient

    from slurm_yolo.report import mlflow_sync
    from tests.helpers.task_seed import allowed as task_allowed, seed_tasks

    client = cat.store.boto3_client()
    lines = seed_tasks(client, cat)
    prefix = f"{cat.bucket}-tasks-"
    first = mlflow_sync.sync(cat, tracking_uri=mlflow_server, experiment_prefix=prefix,
                             allowed_prefix=task_allowed(cat), s3=client)
    assert first.errors == {} and first.created == len(lines)
    ml = MlflowClient(tracking_uri=mlflow_server)
    runs = {}
    for project in ("parts", "roads"):
        exp = ml.get_experiment_by_name(prefix + project)
        runs.update({r.data.tags["slurm_yolo.run_id"]: r for r in ml.search_runs([exp.experiment_id])})
    for key, column, keys in (
            ("cls_best", "metrics/accuracy_top1", {"metrics/accuracy_top1", "metrics/accuracy_top5", "train/loss"}),
            ("seg_mask", "metrics/mAP50-95(M)", {"metrics/mAP50-95_M", "metrics/mAP50_M", "metrics/precision_M",
                                                 "metrics/recall_M", "metrics/mAP50-95_B", "train/seg_loss"}),
            ("depth", "metrics/delta1", {"metrics/delta1", "metrics/abs_rel", "metrics/rmse", "metrics/silog"})):
        run = runs[lines[key]["run_id"]]
        csv = client.get_object(Bucket=cat.bucket, Key=lines[key]["archive_url"].split("/", 3)[3] + "results.csv")
        header = [h.strip() for h in csv["Body"].read().decode().splitlines()[0].split(",")]
        assert set(run.data.metrics) == {mlflow_sync.mlflow_key(h) for h in header if h != "epoch"} | {"fitness"}
        assert keys <= set(run.data.metrics)
        assert run.data.tags["slurm_yolo.task"] == lines[key]["task"]
        assert run.data.tags["slurm_yolo.fitness_metric"] == column
    fitness = ml.get_metric_history(runs[lines["cls_best"]["run_id"]].info.run_id, "fitness")
    assert [(m.step, m.value) for m in sorted(fitness, key=lambda m: m.step)] == [(1, 0.4), (2, 0.7), (3, 0.95), (4, 0.9)]
    again = mlflow_sync.sync(cat, tracking_uri=mlflow_server, experiment_prefix=prefix,
                             allowed_prefix=task_allowed(cat), s3=client)
    assert again.unchanged == len(lines) and again.created == again.updated == 0


@pytest.mark.parametrize("column, key", [("metrics/mAP50-95(M)", "metrics/mAP50-95_M"), ("a//b", "a/b"),
                                         ("./x", "x"), ("x/..", "x"), ("..", "_"), ("lr/pg0", "lr/pg0")])
def test_mlflow_keys_are_valid_and_stable(column, key):
    from mlflow.utils.validation import _validate_metric_name

    from slurm_yolo.report.mlflow_sync import mlflow_key

    assert mlflow_key(column) == key
    _validate_metric_name(key)  # MLflow's own check: raises on a key a server refuses


def test_epoch_metrics_of_a_run_synced_before_fitness_existed():
    """Only new epochs of every column, but every epoch of ``fitness`` when the MLflow run has none yet."""
    from slurm_yolo.report import pages
    from slurm_yolo.report.mlflow_sync import epoch_metrics
    from tests.helpers.task_seed import task_csv

    cols = pages.parse_results_csv(task_csv("classify", [0.4, 0.7, 0.9]).decode())
    got = epoch_metrics(cols, after=2, fitness_column="metrics/accuracy_top1", fitness_after=0)
    assert [(k, v, e) for k, v, e in got if k == "fitness"] == [("fitness", 0.4, 1), ("fitness", 0.7, 2),
                                                                ("fitness", 0.9, 3)]
    assert {e for k, _, e in got if k != "fitness"} == {3}
    assert [e for k, _, e in epoch_metrics(cols, after=2, fitness_column="metrics/accuracy_top1")
            if k == "fitness"] == [3]
