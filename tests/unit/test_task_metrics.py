"""The best epoch by each task's own metric, from results.csv headers Ultralytics 8.4 writes.

The headers are the ones Ultralytics 8.4.190 wrote when each task trained on the synthetic
datasets (stripped, as record.py strips them); the rows are made up so that the epoch
chosen by the task's metric differs from the one box mAP would choose.
"""

from __future__ import annotations

import pytest

from slurm_yolo import record as rec
from slurm_yolo.archive import index_format as fmt
from slurm_yolo.archive import layout

LR = ["lr/pg0", "lr/pg1", "lr/pg2"]
BOX = ["metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)"]
HEADERS = {
    "detect": ["epoch", "time", "train/box_loss", "train/cls_loss", "train/dfl_loss", *BOX,
               "val/box_loss", "val/cls_loss", "val/dfl_loss", *LR],
    "classify": ["epoch", "time", "train/loss", "metrics/accuracy_top1", "metrics/accuracy_top5", "val/loss", *LR],
    "segment": ["epoch", "time", "train/box_loss", "train/seg_loss", "train/cls_loss", "train/dfl_loss",
                "train/sem_loss", *BOX, "metrics/precision(M)", "metrics/recall(M)", "metrics/mAP50(M)",
                "metrics/mAP50-95(M)", "val/box_loss", "val/seg_loss", "val/cls_loss", "val/dfl_loss",
                "val/sem_loss", *LR],
    "pose": ["epoch", "time", "train/box_loss", "train/pose_loss", "train/kobj_loss", "train/cls_loss",
             "train/dfl_loss", *BOX, "metrics/precision(P)", "metrics/recall(P)", "metrics/mAP50(P)",
             "metrics/mAP50-95(P)", "val/box_loss", "val/pose_loss", "val/kobj_loss", "val/cls_loss",
             "val/dfl_loss", *LR],
    "obb": ["epoch", "time", "train/box_loss", "train/cls_loss", "train/dfl_loss", "train/angle_loss", *BOX,
            "val/box_loss", "val/cls_loss", "val/dfl_loss", "val/angle_loss", *LR],
    "semantic": ["epoch", "time", "train/ce_loss", "train/dice_loss", "train/aux_loss", "metrics/mIoU",
                 "metrics/pixel_acc", "val/ce_loss", "val/dice_loss", "val/aux_loss", *LR],
    "depth": ["epoch", "time", "train/dlog_loss", "train/dgrad_loss", "metrics/delta1", "metrics/delta2",
              "metrics/delta3", "metrics/abs_rel", "metrics/rmse", "metrics/silog", "val/dlog_loss",
              "val/dgrad_loss", *LR],
}
# TASK2METRIC of Ultralytics 8.4.190, and the field each column is recorded under.
SELECTION = {
    "detect": ("metrics/mAP50-95(B)", "map50_95"), "obb": ("metrics/mAP50-95(B)", "map50_95"),
    "segment": ("metrics/mAP50-95(M)", "map50_95_mask"), "pose": ("metrics/mAP50-95(P)", "map50_95_pose"),
    "classify": ("metrics/accuracy_top1", "top1"), "semantic": ("metrics/mIoU", "miou"),
    "depth": ("metrics/delta1", "delta1"),
}
FIELDS = {
    "detect": {"precision", "recall", "map50", "map50_95"},
    "obb": {"precision", "recall", "map50", "map50_95"},
    "classify": {"top1", "top5"},
    "segment": {"precision", "recall", "map50", "map50_95",
                "precision_mask", "recall_mask", "map50_mask", "map50_95_mask"},
    "pose": {"precision", "recall", "map50", "map50_95",
             "precision_pose", "recall_pose", "map50_pose", "map50_95_pose"},
    "semantic": {"miou", "pixel_acc"},
    "depth": {"delta1", "delta2", "delta3", "abs_rel", "rmse", "silog"},
}


def write_csv(path, header, selection, box=None):
    """Three epochs: the task's metric peaks at epoch 2, box mAP50-95 (unless it is the task's) at 3."""
    rows = []
    for epoch, (sel, boxv) in enumerate([(0.2, 0.1), (0.8, 0.2), (0.5, 0.9)], start=1):
        values = []
        for column in header:
            if column == "epoch":
                values.append(str(epoch))
            elif column == selection:
                values.append(str(sel))
            elif column == "metrics/mAP50-95(B)":
                values.append(str(boxv))
            elif column.startswith("metrics/"):
                values.append(f"0.{epoch}{len(column)}")
            else:
                values.append("0.5")
        rows.append(",".join(values))
    # Padded headers, as older Ultralytics wrote them: stripped on reading.
    path.write_text(",".join(f"{h:>12}" for h in header) + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("task", sorted(HEADERS))
def test_best_epoch_by_the_tasks_metric(tmp_path, task):
    column, field = SELECTION[task]
    csv = write_csv(tmp_path / "results.csv", HEADERS[task], column)
    m = rec.read_metrics(csv, column)
    assert (m["best_epoch"], m["epochs_done"], m["fitness_metric"]) == (2, 3, column)
    assert m["fitness"] == m[field]
    fields = set(rec.metric_values(m))
    assert fields == FIELDS[task] | set(rec.BOX_FIELDS) - {f for f in rec.BOX_FIELDS if m[f] is None}
    assert FIELDS[task] <= set(m) and set(rec.BOX_FIELDS) <= set(m)  # box set always present (None without boxes)
    if "metrics/mAP50-95(B)" not in HEADERS[task]:
        assert all(m[f] is None for f in rec.BOX_FIELDS)


def test_segment_is_not_ranked_by_box_map(tmp_path):
    csv = write_csv(tmp_path / "results.csv", HEADERS["segment"], "metrics/mAP50-95(M)")
    assert rec.read_metrics(csv, "metrics/mAP50-95(M)")["best_epoch"] == 2
    assert rec.read_metrics(csv)["best_epoch"] == 3  # no column known: box mAP50-95, as before


@pytest.mark.parametrize("candidates, expected", [
    (None, "metrics/accuracy_top1"),  # no box mAP: the first metrics/ column
    ("metrics/accuracy_top5", "metrics/accuracy_top5"),
    (["metrics/mAP50-95(M)", "metrics/accuracy_top1"], "metrics/accuracy_top1"),  # not in this file: next
    (["train/loss"], "metrics/accuracy_top1"),  # not a metrics/ column: never ranks
    ([None, 3, "../../etc"], "metrics/accuracy_top1"),  # a hand-edited run.json
])
def test_fitness_column_is_trusted_only_if_the_file_has_it(tmp_path, candidates, expected):
    csv = write_csv(tmp_path / "results.csv", HEADERS["classify"], "metrics/accuracy_top1")
    assert rec.read_metrics(csv, candidates)["fitness_metric"] == expected


def test_ties_go_to_the_later_epoch_and_missing_values_rank_last(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text("epoch,metrics/accuracy_top1,metrics/accuracy_top5\n1,0.5,0.1\n2,0.9,0.2\n3,0.9,0.3\n4,,1.0\n"
                   "5,nan,1.0\n")
    m = rec.read_metrics(csv, "metrics/accuracy_top1")
    assert (m["best_epoch"], m["top5"], m["epochs_done"]) == (3, 0.3, 5)


def test_no_metric_value_at_all(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text("epoch,train/loss\n1,0.5\n")
    m = rec.read_metrics(csv)
    assert (m["best_epoch"], m["fitness_metric"], m["fitness"]) == (1, None, None)
    assert rec.read_metrics(tmp_path / "missing.csv") is None


def test_a_hostile_csv_cannot_bloat_the_record(tmp_path):
    csv = tmp_path / "results.csv"
    header = ["epoch"] + [f"metrics/m{i}" for i in range(1000)]
    csv.write_text(",".join(header) + "\n" + ",".join(["1"] + ["0.5"] * 1000) + "\n")
    assert len(rec.metric_values(rec.read_metrics(csv))) <= rec.MAX_METRIC_FIELDS


@pytest.mark.parametrize("task, metrics, expected", [
    ("classify", {"top1": 0.9, "fitness_metric": "metrics/accuracy_top1", "fitness": 0.9},
     ("metrics/accuracy_top1", 0.9)),
    ("detect", {"map50_95": 0.4, "map50": 0.6}, ("metrics/mAP50-95(B)", 0.4)),  # before fitness was recorded
    ("obb", {"map50_95": 0.4}, ("metrics/mAP50-95(B)", 0.4)),
    ("segment", {"map50_95": 0.4}, (None, None)),  # its box mAP is not what a segment run is chosen by
    ("detect", None, (None, None)),
    (["not", "a", "name"], {"map50_95": 0.4}, (None, None)),
])
def test_fitness_of_a_record(task, metrics, expected):
    got = rec.fitness_of(task, metrics)
    assert (got["fitness_metric"], got["fitness"]) == expected


def test_index_record_carries_the_tasks_metrics(tmp_path):
    csv = write_csv(tmp_path / "results.csv", HEADERS["classify"], "metrics/accuracy_top1")
    run = {"run_id": "r1", "task": "classify", "metrics": rec.read_metrics(csv, "metrics/accuracy_top1")}
    indexed = layout.index_record(run)
    assert indexed["fitness_metric"] == "metrics/accuracy_top1" and indexed["fitness"] == 0.8
    assert set(indexed["metrics"]) == {"top1", "top5"} and indexed["metrics"]["top1"] == 0.8
    assert indexed["map50_95"] is None
    row = fmt.from_table(fmt.to_table([indexed]))[0]
    assert row["metrics"] == indexed["metrics"] and row["fitness"] == 0.8


def test_a_version_1_file_reads_as_its_records_written_now():
    """The Arrow fill of a version 1 file gives each row what to_row gives the same record
    (detect/obb/no task: fitness from map50_95; other tasks none; metrics = the box columns)."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers.catalog_seed import make_record

    rng = random.Random(3)
    lines = [make_record(i, rng) for i in range(300)]
    for i, line in enumerate(lines):
        line["task"] = ["detect", "segment", "obb", "classify", None][i % 5]
        line["precision"] = None if i % 3 else 0.5
    now = fmt.to_table(lines)
    v1 = now.drop_columns(["fitness_metric", "fitness", "metrics"]).replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    pq.write_table(v1, sink)
    body = sink.getvalue().to_pybytes()
    assert fmt.file_version(pq.ParquetFile(pa.BufferReader(body)).schema_arrow) == 1
    assert fmt.from_table(fmt.decode(body)) == fmt.from_table(now)
    assert {r["task"] for r in fmt.from_table(now) if r["fitness"] is not None} <= {"detect", "obb", None}
