"""Archived runs of every kind of task for the portal and MLflow tests: each with the
``results.csv`` header its task really logs (Ultralytics 8.4, padded as Ultralytics pads it), its
task's plots, and the record the epilog would leave (metrics chosen by
:func:`slurm_yolo.record.read_metrics` by the task's column)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from slurm_yolo.catalog.index import Catalog
from slurm_yolo.record import read_metrics
from slurm_yolo.runfolder import RESULTS_CSV
from tests.helpers.catalog_seed import archive_run, results_csv, run_json, write_index
from tests.helpers.report_seed import ALLOWED, args_yaml, image

LR = ["lr/pg0", "lr/pg1", "lr/pg2"]
BOX = ["metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)"]
HEADERS = {
    "classify": ["train/loss", "metrics/accuracy_top1", "metrics/accuracy_top5", "val/loss"],
    "segment": ["train/box_loss", "train/seg_loss", "train/cls_loss", "train/dfl_loss", "train/sem_loss", *BOX,
                "metrics/precision(M)", "metrics/recall(M)", "metrics/mAP50(M)", "metrics/mAP50-95(M)",
                "val/box_loss", "val/seg_loss", "val/cls_loss", "val/dfl_loss", "val/sem_loss"],
    "pose": ["train/box_loss", "train/pose_loss", "train/kobj_loss", "train/cls_loss", "train/dfl_loss", *BOX,
             "metrics/precision(P)", "metrics/recall(P)", "metrics/mAP50(P)", "metrics/mAP50-95(P)",
             "val/box_loss", "val/pose_loss", "val/kobj_loss", "val/cls_loss", "val/dfl_loss"],
    "semantic": ["train/ce_loss", "train/dice_loss", "train/aux_loss", "metrics/mIoU", "metrics/pixel_acc",
                 "val/ce_loss", "val/dice_loss", "val/aux_loss"],
    "depth": ["train/dlog_loss", "train/dgrad_loss", "metrics/delta1", "metrics/delta2", "metrics/delta3",
              "metrics/abs_rel", "metrics/rmse", "metrics/silog", "val/dlog_loss", "val/dgrad_loss"],
    # yolo26 detection: l1_loss where the older families log dfl_loss.
    "detect": ["train/box_loss", "train/cls_loss", "train/l1_loss", *BOX, "val/box_loss", "val/cls_loss",
               "val/l1_loss"],
}
SELECTION = {"classify": "metrics/accuracy_top1", "segment": "metrics/mAP50-95(M)", "pose": "metrics/mAP50-95(P)",
             "semantic": "metrics/mIoU", "depth": "metrics/delta1", "detect": "metrics/mAP50-95(B)"}
LOWER = ("abs_rel", "rmse", "silog")


def task_csv(task: str, fitness: list[float], others: dict[str, list[float]] | None = None) -> bytes:
    """A ``results.csv`` of ``task``: the selection column follows ``fitness`` (one row per
    value), a column named in ``others`` follows its list, every other metric rises with it
    (errors fall), losses fall."""
    header = ["epoch", "time", *HEADERS[task], *LR]
    rows = []
    for i, f in enumerate(fitness):
        row: list[float] = []
        for column in header:
            if column == "epoch":
                row.append(i + 1)
            elif column == "time":
                row.append(round(3.5 * (i + 1), 2))
            elif column in (others or {}):
                row.append(others[column][i])
            elif column == SELECTION[task]:
                row.append(f)
            elif column.startswith("metrics/"):
                row.append(round(2.0 - f, 4) if any(k in column for k in LOWER) else round(min(1.0, f * 1.2), 4))
            elif column.startswith("lr/"):
                row.append(0.01)
            else:
                row.append(round(2.0 / (i + 1), 4))
        rows.append(row)
    # Ultralytics pads every cell to the header's width.
    width = max(len(h) for h in header) + 2
    lines = [",".join(h.rjust(width) for h in header)]
    lines += [",".join(f"{v:g}".rjust(width) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def task_record(bucket: str, run_id: str, task: str, csv: bytes, *, project: str, model: str,
                user: str = "ana") -> dict:
    """A run.json record as the launcher and the epilog leave it for a run of ``task``."""
    rec = run_json(run_id, bucket, project=project, model=model)
    rec.update(task=task, user=user, fitness_metric=SELECTION[task],
               archive_url=f"s3://{bucket}/runs/{user}/{task}/{project}/{model}/{run_id}/")
    rec["config"]["run"]["task"] = task
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / RESULTS_CSV).write_bytes(csv)
        rec["metrics"] = read_metrics(Path(tmp) / RESULTS_CSV, SELECTION[task])
    return rec


def seed_tasks(client, cat: Catalog) -> dict[str, dict]:
    """Eight runs, their index records by key:

    - ``cls_best`` / ``cls_low``: classify (project ``parts``), top-1 0.95 at epoch 3 / 0.6; the
      low one has the higher top-5, so a ranking by top-5 would pick it;
    - ``seg_mask`` / ``seg_box``: segment, mask mAP50-95 0.35 / 0.2, box mAP50-95 0.4 / 0.6 (the
      one with the better masks has the worse boxes);
    - ``pose``; ``sem`` (semantic, project ``roads``); ``depth`` (project ``roads``);
    - ``y26``: detection with a yolo26 model (``l1_loss``).
    """
    b = cat.bucket
    box = "metrics/mAP50-95(B)"
    specs = {
        "cls_best": ("20261119_090000_clsbest1", "classify", "parts", "yolov8n-cls",
                     task_csv("classify", [0.4, 0.7, 0.95, 0.9], {"metrics/accuracy_top5": [0.8, 0.9, 0.96, 0.97]}),
                     {"confusion_matrix_normalized.png": image((20, 20, 120)), "train_batch0.jpg": image((9, 9, 9), "JPEG"),
                      "val_batch0_pred.jpg": image((30, 90, 30), "JPEG")}),
        "cls_low": ("20261119_100000_clslow02", "classify", "parts", "yolo11n-cls",
                    task_csv("classify", [0.3, 0.6, 0.5], {"metrics/accuracy_top5": [0.9, 0.99, 0.99]}),
                    {"confusion_matrix.png": image((120, 20, 20))}),
        "seg_mask": ("20261119_110000_segmask3", "segment", "parts", "yolov8n-seg",
                     task_csv("segment", [0.1, 0.25, 0.35], {box: [0.2, 0.3, 0.4]}),
                     {"MaskPR_curve.png": image((200, 100, 0)), "BoxPR_curve.png": image((0, 100, 200)),
                      "MaskF1_curve.png": image((200, 150, 0)), "confusion_matrix.png": image((50, 50, 50))}),
        "seg_box": ("20261119_120000_segbox04", "segment", "parts", "yolo11n-seg",
                    task_csv("segment", [0.1, 0.2, 0.15], {box: [0.3, 0.5, 0.6]}), {}),
        "pose": ("20261119_130000_pose0005", "pose", "parts", "yolov8n-pose", task_csv("pose", [0.2, 0.45]),
                 {"PosePR_curve.png": image((10, 200, 10))}),
        "sem": ("20261120_090000_semant06", "semantic", "roads", "yolo26n-sem", task_csv("semantic", [0.3, 0.5, 0.6]),
                {"iou_bar_chart.png": image((90, 0, 90)), "confusion_matrix.png": image((0, 90, 90))}),
        "depth": ("20261120_100000_depth007", "depth", "roads", "yolo26n-depth", task_csv("depth", [0.5, 0.7, 0.8]),
                  {"val_batch0_calibrated.jpg": image((100, 100, 0), "JPEG")}),
        "y26": ("20261120_110000_yolo2608", "detect", "parts", "yolo26n", task_csv("detect", [0.2, 0.3]), {}),
    }
    lines = {}
    for key, (run_id, task, project, model, csv, files) in specs.items():
        rec = task_record(b, run_id, task, csv, project=project, model=model)
        files = {RESULTS_CSV: csv, "args.yaml": args_yaml(0.01).replace(b"task: detect", f"task: {task}".encode()),
                 "results.png": image((250, 250, 250)), **files}
        lines[key] = archive_run(client, b, rec, files, cat.index_url)
    write_index(client, cat, list(lines.values()))
    return lines


def allowed(cat: Catalog) -> str:
    return ALLOWED.format(bucket=cat.bucket)


__all__ = ["HEADERS", "SELECTION", "allowed", "results_csv", "seed_tasks", "task_csv", "task_record"]
