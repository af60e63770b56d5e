"""Every task Ultralytics trains, trained for real through the dev cluster and followed to the end.

One module fixture makes a small dataset per task (slurm_yolo.synthetic), writes a config per
task like configs/<task>-demo.yaml and submits them all at once with ``slurm-yolo submit --json``:
one 1-CPU job per task, two epochs, plots on, plus two classify runs of their own project for the
prune (one trained long enough to learn, one not). Then each part is checked on what those jobs
left: the archive (every file by sha256, the task's own results.csv columns and plots), run.json
and the index record (the task's selection metric, its value at the best epoch, every metrics/*
column under its field name), ``runs list``/``runs show``, the portal in headless Chromium, MLflow,
and ``store prune`` ranking a classify project by top-1 accuracy.

Under pytest-xdist the module's tests may land on both workers: the jobs are submitted once per
test run (the first worker writes their handles, keyed by the run's PYTEST_XDIST_TESTRUNUID), and
the prune works on its own project, so no other test here sees what it deletes.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import subprocess
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from slurm_yolo.runfolder import RESULTS_CSV, RUN_JSON
from slurm_yolo.tasks import installed_tasks, metric_field
from tests.cluster.conftest import LOCK, locked
from tests.cluster.helpers import (archived_record, index_record, list_keys, read_object, shared_config,
                                   slurm_yolo as cli, split, submit_json, verify_archive, wait_job_over)

pytestmark = [pytest.mark.cluster, pytest.mark.training, pytest.mark.xdist_group("cluster-debug")]

# The model of each task (semantic and depth exist only in the yolo26 family).
MODELS = {"detect": "yolov8n.yaml", "segment": "yolov8n-seg.yaml", "pose": "yolov8n-pose.yaml",
          "obb": "yolov8n-obb.yaml", "classify": "yolov8n-cls.yaml", "semantic": "yolo26n-sem.yaml",
          "depth": "yolo26n-depth.yaml"}
TASKS = tuple(MODELS)
# Columns of results.csv only that task's model writes.
OWN_COLUMNS = {
    "detect": {"metrics/mAP50-95(B)", "train/dfl_loss"},
    "segment": {"metrics/mAP50-95(M)", "metrics/mAP50(M)", "train/seg_loss"},
    "pose": {"metrics/mAP50-95(P)", "metrics/mAP50(P)", "train/pose_loss", "train/kobj_loss"},
    "obb": {"metrics/mAP50-95(B)", "train/angle_loss"},
    "classify": {"metrics/accuracy_top1", "metrics/accuracy_top5", "train/loss"},
    "semantic": {"metrics/mIoU", "metrics/pixel_acc", "train/ce_loss", "train/dice_loss"},
    "depth": {"metrics/delta1", "metrics/abs_rel", "metrics/rmse", "train/dlog_loss"},
}
# Plots only that task's validation draws (all archived: the run folder is archived whole).
PLOTS = {
    "detect": {"confusion_matrix.png", "BoxPR_curve.png", "results.png"},
    "segment": {"MaskPR_curve.png", "BoxPR_curve.png", "confusion_matrix.png"},
    "pose": {"PosePR_curve.png", "BoxPR_curve.png"},
    "obb": {"BoxPR_curve.png", "confusion_matrix.png"},
    "classify": {"confusion_matrix.png", "results.png"},
    "semantic": {"confusion_matrix.png", "iou_bar_chart.png"},
    "depth": {"val_batch0_calibrated.jpg", "results.png"},
}
# Field names a query, the runs table and the portal use for each task's own metrics.
FIELDS = {
    "detect": {"map50", "map50_95", "precision", "recall"},
    "segment": {"map50_95_mask", "map50_mask", "precision_mask", "recall_mask", "map50_95"},
    "pose": {"map50_95_pose", "map50_pose", "precision_pose", "recall_pose", "map50_95"},
    "obb": {"map50", "map50_95", "precision", "recall"},
    "classify": {"top1", "top5"},
    "semantic": {"miou", "pixel_acc"},
    "depth": {"delta1", "delta2", "delta3", "abs_rel", "rmse", "silog"},
}
# Measured: ~1.35 GB peak for any of these trainings at imgsz 64; the host node has 8000M, so
# five run at once and the rest wait for memory rather than for a CPU.
MEM = "1600M"
TIMEOUT_S = 900  # nine trainings on a loaded 2-core machine, with the other cluster tests beside
# The prune pair: classify runs of one project, one that learns (10 epochs on 48 images: top1
# 1.0 on 8 val images when checked, 0.375 until epoch 6), one that does not (1 epoch, 16 images).
GOOD_CLASSIFY = {"epochs": 10, "warmup_epochs": 1}
POOR_CLASSIFY = {"epochs": 1}


@dataclass(frozen=True)
class Trained:
    """What the module's jobs left: their handles (``submit --json``) and where they live."""

    uid: str
    runs: dict[str, dict]        # task -> handle, the seven-task project
    prune: dict[str, dict]       # "good" / "poor" -> handle, the classify prune project

    @property
    def project(self) -> str:
        return f"tasks-{self.uid}"

    @property
    def prune_project(self) -> str:
        return f"tasks-{self.uid}-prune"

    @property
    def allowed_prefix(self) -> str:
        return f"s3://slurm-yolo/runs/{{user}}/tasks-{self.uid}/"

    def handles(self) -> list[dict]:
        return [*self.runs.values(), *self.prune.values()]


def make_datasets(cluster) -> dict[str, Path]:
    """The seven small datasets plus the prune's larger classify one, world-readable, made once
    per cluster (the other worker or an earlier session may have made them)."""
    from slurm_yolo.synthetic import make_task_dataset

    root = Path(cluster["SLURM_YOLO_DEV_STATE"]) / "datasets" / "tasks"
    specs = {task: (task, 16) for task in TASKS} | {"classify-48": ("classify", 48)}
    data = {}
    with locked(LOCK.with_suffix(".dataset"), fcntl.LOCK_EX):
        for name, (task, n_train) in specs.items():
            done = root / f"{name}.done"
            folder = root / name
            if not done.exists():
                data[name] = make_task_dataset(folder, task, n_train=n_train, n_val=8, size=64)
                done.write_text(str(data[name]))
            data[name] = Path(done.read_text())
        subprocess.run(["chmod", "-R", "a+rX", str(root.parent)], check=True)
    return data


def task_config(task: str, data: Path, project: str, archive: str, **train) -> Path:
    """A 1-CPU config of ``task`` shaped like configs/<task>-demo.yaml, where the jobs' users read it."""
    cfg = {
        "run": {"task": task, "project": project, "model_name": Path(MODELS[task]).stem},
        "train": {"model": MODELS[task], "data": str(data), "epochs": 2, "imgsz": 64, "batch": 8, "workers": 0,
                  "plots": True, "amp": False, "val": True, **train},
        "slurm": {"partition": "debug", "gpus": 0, "cpus_per_task": 1, "mem": MEM, "time": "00:15:00",
                  "signal_delay_s": 30},
        "archive": {"url": archive},
    }
    return shared_config(cfg, f"cfg-{task}")


def submit_all(cluster, uid: str) -> dict:
    data = make_datasets(cluster)
    runs_root = Path(cluster["SLURM_YOLO_RUNS"]) / f"t-tasks-{uid}"
    runs_root.mkdir(mode=0o1777)
    os.chmod(runs_root, 0o1777)
    archive = f"s3://slurm-yolo/runs/{{user}}/tasks-{uid}"
    project = f"tasks-{uid}"
    runs = {task: submit_json(cluster, task_config(task, data[task], project, archive), runs_root=runs_root)
            for task in TASKS}
    prune = {"good": submit_json(cluster, task_config("classify", data["classify-48"], f"{project}-prune", archive,
                                                      **GOOD_CLASSIFY), runs_root=runs_root),
             "poor": submit_json(cluster, task_config("classify", data["classify"], f"{project}-prune", archive,
                                                      **POOR_CLASSIFY), runs_root=runs_root)}
    return {"uid": uid, "runs": runs, "prune": prune}


@pytest.fixture(scope="module")
def trained(cluster, s3) -> Trained:
    """Every task's run (and the prune pair) submitted at once, waited for, archived."""
    key = os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex
    state = Path(f"/tmp/slurm-yolo-test-tasks-{key}.json")
    # Held shared while the jobs run: no test that stops the store or crashes a node meanwhile.
    with locked(LOCK, fcntl.LOCK_SH):
        with locked(state.with_suffix(".lock"), fcntl.LOCK_EX):
            if not state.exists():
                state.write_text(json.dumps(submit_all(cluster, uuid.uuid4().hex[:8])))
            saved = json.loads(state.read_text())
        done = Trained(saved["uid"], saved["runs"], saved["prune"])
        for handle in done.handles():
            wait_job_over(cluster, handle["job_id"], timeout=TIMEOUT_S)
        # Not the prune pair: with two workers, each builds this fixture, and the prune test on
        # one of them may already have deleted the poorer run when the other gets here.
        for handle in done.runs.values():
            archived_record(s3, handle["archive_url"], timeout=120)
    return done


def results(s3, handle: dict) -> tuple[list[str], list[dict[str, str]]]:
    """The archived results.csv: its header (spaces stripped, as Ultralytics pads them) and rows."""
    text = read_object(s3, handle["archive_url"] + RESULTS_CSV).decode()
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader)]
    return header, [dict(zip(header, (v.strip() for v in row))) for row in reader if row]


def best_row(rows: list[dict[str, str]], column: str) -> dict[str, str]:
    """The epoch Ultralytics keeps best.pt of: the highest ``column``, the later one of equals."""
    best = None
    for row in rows:
        if best is None or float(row[column]) >= float(best[column]):
            best = row
    assert best is not None
    return best


def wall_s(record: dict) -> float:
    attempts = record["attempts"]
    start, end = datetime.fromisoformat(attempts[0]["start"]), datetime.fromisoformat(attempts[-1]["end"])
    return (end - start).total_seconds()


def selection(task: str) -> str:
    return installed_tasks().selection[task]


@pytest.mark.parametrize("task", TASKS)
def test_trains_and_is_archived(trained, s3, task):
    handle = trained.runs[task]
    record, manifest = verify_archive(s3, handle["archive_url"])
    assert record["end_state"] == "COMPLETED", record.get("epilog")
    assert record["task"] == task and f"/{task}/{trained.project}/" in handle["archive_url"]
    header, rows = results(s3, handle)
    assert OWN_COLUMNS[task] <= set(header), f"{task}: results.csv header {header}"
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]
    files = set(manifest["files"])
    assert PLOTS[task] <= files, f"{task}: missing plots {sorted(PLOTS[task] - files)}"
    assert {"weights/best.pt", "weights/last.pt", "args.yaml", "train.log"} <= files
    column = selection(task)
    print(f"{task}: {len(rows)} epochs, {column} = {record['metrics'].get('fitness')}, "
          f"job wall {wall_s(record):.0f} s")


@pytest.mark.parametrize("task", TASKS)
def test_record_and_index_follow_the_task_metric(trained, s3, cluster, task):
    handle = trained.runs[task]
    record = json.loads(read_object(s3, handle["archive_url"] + RUN_JSON))
    column = selection(task)
    assert record["fitness_metric"] == column
    metrics = record["metrics"]
    header, rows = results(s3, handle)
    best = best_row(rows, column)
    assert metrics["fitness_metric"] == column and metrics["best_epoch"] == int(float(best["epoch"]))
    assert metrics["fitness"] == pytest.approx(float(best[column]))
    assert metrics["epochs_done"] == 2
    # Every metrics/* column of the best epoch, under its stable field name.
    expected = {metric_field(c): float(best[c]) for c in header if c.startswith("metrics/")}
    assert FIELDS[task] <= set(expected), f"{task}: metric_field names {sorted(expected)}"
    for field, value in expected.items():
        assert metrics[field] == pytest.approx(value, nan_ok=True), field
    indexed = index_record(s3, cluster, handle["run_id"])
    assert indexed["task"] == task and indexed["fitness_metric"] == column
    assert indexed["fitness"] == pytest.approx(float(best[column]))
    assert set(expected) <= set(indexed["metrics"]), f"{task}: index metrics {sorted(indexed['metrics'])}"
    for field, value in expected.items():
        assert indexed["metrics"][field] == pytest.approx(value, nan_ok=True), field
    if task in ("detect", "obb", "segment", "pose"):  # the box set keeps its top-level columns
        assert indexed["map50_95"] == pytest.approx(float(best["metrics/mAP50-95(B)"]))
        assert indexed["map50"] == pytest.approx(float(best["metrics/mAP50(B)"]))


def _list(cluster, *args: str) -> list[dict]:
    proc = cli(cluster, "runs", "list", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_runs_list_and_show_query_the_task_fields(trained, cluster):
    ours = {h["run_id"] for h in trained.handles()}
    classify = trained.runs["classify"]["run_id"]
    listed = _list(cluster, "--project", trained.project, "--where", "metrics.top1>=0")
    assert [r["run_id"] for r in listed] == [classify]
    assert listed[0]["fitness_metric"] == "metrics/accuracy_top1"
    segment = _list(cluster, "--project", trained.project, "--where", "metrics.map50_95_mask>=0")
    assert [r["run_id"] for r in segment] == [trained.runs["segment"]["run_id"]]
    by_task = _list(cluster, "--project", trained.project, "--task", "depth")
    assert [r["run_id"] for r in by_task] == [trained.runs["depth"]["run_id"]]
    # Sorted by a task field, missing values last: every classify run of ours, best first.
    ranked = [r for r in _list(cluster, "--task", "classify", "--where", "metrics.top1>=0", "--sort",
                               "-metrics.top1") if r["run_id"] in ours]
    tops = [r["metrics"]["top1"] for r in ranked]
    assert len(ranked) >= 2 and tops == sorted(tops, reverse=True), ranked
    shown = cli(cluster, "runs", "show", classify, "--json")
    assert shown.returncode == 0, shown.stderr
    one = json.loads(shown.stdout)
    assert one["fitness_metric"] == "metrics/accuracy_top1" and {"top1", "top5"} <= set(one["metrics"])
    text = cli(cluster, "runs", "list", "--project", trained.project)
    assert text.returncode == 0 and classify in text.stdout, text.stderr


@pytest.fixture(scope="module")
def portal(trained, cluster, tmp_path_factory):
    """The portal built by ``slurm-yolo report build`` from the cluster's index, served on loopback."""
    from slurm_yolo.report.serve import make_server

    out = tmp_path_factory.mktemp("tasks-portal")
    proc = cli(cluster, "report", "build", "--out", str(out), "--allowed-prefix", trained.allowed_prefix, "--json")
    assert proc.returncode == 0, proc.stderr
    built = json.loads(proc.stdout)
    assert not built["errors"], built["errors"]
    server = make_server(out, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def severe(browser) -> list[dict]:
    return [m for m in browser.get_log("browser") if m.get("level") == "SEVERE"]


def test_portal_shows_each_task(trained, s3, portal, browser, artifacts):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    for task in TASKS:
        handle = trained.runs[task]
        header, rows = results(s3, handle)
        column = selection(task)
        best = best_row(rows, column)
        browser.get_log("browser")
        browser.get(f"{portal}run/{handle['run_id']}.html")
        browser.save_screenshot(str(artifacts / f"task-{task}.png"))
        assert severe(browser) == [], task
        shown = browser.execute_script(
            "return Array.from(document.querySelectorAll('#metrics tr.metric')).map("
            "r => [r.getAttribute('data-field'), r.classList.contains('fitness'), r.querySelector('td').textContent])")
        fields = {f: (fit, text) for f, fit, text in shown}
        assert FIELDS[task] <= set(fields), f"{task}: the page's metric rows {sorted(fields)}"
        assert [f for f, (fit, _) in fields.items() if fit] == [metric_field(column)], task
        for c in (c for c in header if c.startswith("metrics/")):
            f = metric_field(c)
            if not math.isnan(float(best[c])):
                assert fields[f][1] == f"{float(best[c]):.4f}", f"{task}: {f} shows {fields[f][1]}"
        assert column in browser.find_element("id", "fitness").text
        assert browser.find_elements("css selector", "#curves svg"), f"{task}: no curves"
        alts = set(browser.execute_script("return Array.from(document.images).map(i => i.getAttribute('alt'))"))
        assert PLOTS[task] <= alts, f"{task}: plots not on the page {sorted(PLOTS[task] - alts)}"
        # The images load lazily: each is brought into view, then must have loaded.
        WebDriverWait(browser, 10).until(lambda _: browser.execute_script(
            "return Array.from(document.images).filter(i => arguments[0].includes(i.getAttribute('alt')))"
            ".every(i => { i.scrollIntoView(); return i.complete && i.naturalWidth > 0; })", sorted(PLOTS[task])))

    browser.get_log("browser")
    browser.get(portal + "runs.html")
    assert severe(browser) == []
    rows = lambda: browser.execute_script(  # noqa: E731
        "return Array.from(document.querySelectorAll('#runs-body tr')).map(r => r.getAttribute('data-run'))")
    Select(browser.find_element("id", "f-project")).select_by_value(trained.project)
    WebDriverWait(browser, 5).until(lambda _: set(rows()) == {h["run_id"] for h in trained.runs.values()})
    for task in ("classify", "segment", "depth"):
        Select(browser.find_element("id", "f-task")).select_by_value(task)
        WebDriverWait(browser, 5).until(lambda _: rows() == [trained.runs[task]["run_id"]])
        heads = browser.execute_script(
            "return Array.from(document.querySelectorAll('#runs-head th')).map(t => t.getAttribute('data-key'))")
        assert "metrics." + metric_field(selection(task)) in heads, f"{task}: table columns {heads}"
    browser.save_screenshot(str(artifacts / "task-runs-filtered.png"))


def test_mlflow_gets_every_metric_column_and_the_task(trained, s3, cluster, mlflow_server):
    from mlflow.tracking import MlflowClient

    from slurm_yolo.report.mlflow_sync import mlflow_key

    prefix = f"{trained.uid}-"
    env = {**cluster, "MLFLOW_TRACKING_URI": mlflow_server}
    proc = cli(env, "mlflow", "sync", "--json", "--experiment-prefix", prefix, "--allowed-prefix",
               trained.allowed_prefix)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["errors"] == {}
    ml = MlflowClient(tracking_uri=mlflow_server)
    exp = ml.get_experiment_by_name(prefix + trained.project)
    assert exp is not None
    found = {r.data.tags["slurm_yolo.run_id"]: r for r in ml.search_runs([exp.experiment_id])}
    assert set(found) == {h["run_id"] for h in trained.runs.values()}
    for task, handle in trained.runs.items():
        run = found[handle["run_id"]]
        assert run.data.tags["slurm_yolo.task"] == task
        assert run.data.tags["slurm_yolo.fitness_metric"] == selection(task)
        header, rows = results(s3, handle)
        columns = [c for c in header if c.startswith(("metrics/", "train/", "val/"))]
        missing = {mlflow_key(c) for c in columns} - set(run.data.metrics)
        assert not missing, f"{task}: not in MLflow {sorted(missing)}"
        history = ml.get_metric_history(run.info.run_id, mlflow_key(selection(task)))
        assert [m.step for m in history] == [1, 2], task
        assert [m.value for m in history] == pytest.approx([float(r[selection(task)]) for r in rows]), task


def test_prune_keeps_the_most_accurate_classify_run(trained, s3, cluster):
    good, poor = trained.prune["good"], trained.prune["poor"]
    for handle in (good, poor):
        archived_record(s3, handle["archive_url"], timeout=120)
    tops = {name: json.loads(read_object(s3, h["archive_url"] + RUN_JSON))["metrics"]["top1"]
            for name, h in trained.prune.items()}
    assert tops["good"] > tops["poor"], f"the prune pair did not differ in top1: {tops}"
    print(f"prune pair top1: {tops}")
    args = ["store", "prune", "--keep-top", "1", "--older-than", "0h", "--project", trained.prune_project, "--json"]
    dry = cli(cluster, *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert [r["run_id"] for r in plan["keep"]] == [good["run_id"]], plan
    assert [r["run_id"] for r in plan["delete"]] == [poor["run_id"]], plan
    assert plan["delete"][0]["fitness_metric"] == "metrics/accuracy_top1"
    assert list_keys(s3, poor["archive_url"]), "a dry run deleted nothing"

    done = cli(cluster, *args)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deleted"] == 1
    assert list_keys(s3, poor["archive_url"]) == []
    bucket, prefix = split(cluster.get("SLURM_YOLO_INDEX", "s3://slurm-yolo/index/"))
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=bucket, Key=f"{prefix}runs/{poor['run_id']}.json")
    verify_archive(s3, good["archive_url"])
    assert [r["run_id"] for r in _list(cluster, "--project", trained.prune_project)] == [good["run_id"]]
