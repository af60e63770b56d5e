"""The task table, read from the installed Ultralytics' source, and the metric field names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from slurm_yolo.errors import ConfigError
from slurm_yolo.tasks import DEFAULT_TASK, LOWER_IS_BETTER, TaskTable, installed_tasks, metric_field


def test_installed_tasks_is_what_ultralytics_cfg_holds():
    # Importing ultralytics here is what the product must not do; the test may, to check the
    # source reading against the package's own values.
    import ultralytics
    import ultralytics.cfg

    table = installed_tasks()
    assert table.tasks == tuple(ultralytics.cfg.TASKS)
    assert dict(table.selection) == dict(ultralytics.cfg.TASK2METRIC)
    assert table.ultralytics_version == ultralytics.__version__
    assert DEFAULT_TASK in table.tasks


def test_installed_tasks_imports_neither_ultralytics_nor_torch():
    code = ("import sys; from slurm_yolo.tasks import installed_tasks; t = installed_tasks(); "
            "assert 'classify' in t.tasks; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ultralytics')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("task, column", [
    ("detect", "metrics/mAP50-95(B)"), ("obb", "metrics/mAP50-95(B)"),
    ("segment", "metrics/mAP50-95(M)"), ("pose", "metrics/mAP50-95(P)"),
    ("classify", "metrics/accuracy_top1"), ("semantic", "metrics/mIoU"), ("depth", "metrics/delta1"),
])
def test_selection_column_of_every_task(task, column):
    assert installed_tasks().selection_column(task) == column


def test_unknown_task_names_the_known_ones_and_the_version():
    table = TaskTable(tasks=("detect", "classify"), selection={"detect": "metrics/mAP50-95(B)",
                      "classify": "metrics/accuracy_top1"}, ultralytics_version="9.9.9")
    with pytest.raises(ConfigError, match=r"'segmnet' is not one that Ultralytics 9\.9\.9 trains; "
                                          r"known tasks: detect, classify"):
        table.selection_column("segmnet")


def test_no_ultralytics_says_how_to_install_it(tmp_path):
    # An interpreter whose path finds no ultralytics: -S drops site-packages, -I the user site.
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from slurm_yolo.errors import ConfigError\n"
            "from slurm_yolo.tasks import installed_tasks\n"
            "try:\n    installed_tasks()\nexcept ConfigError as e:\n    print(e)\n") % str(_repo_root())
    out = subprocess.run([sys.executable, "-S", "-I", "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert out.strip() == f"ultralytics is not installed in {sys.executable}: pip install 'slurm-yolo[train]'"


def _repo_root():
    from pathlib import Path
    return Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("column, field", [
    ("metrics/mAP50-95(B)", "map50_95"), ("metrics/mAP50(B)", "map50"),
    ("metrics/precision(B)", "precision"), ("metrics/recall(B)", "recall"),
    ("metrics/mAP50-95(M)", "map50_95_mask"), ("metrics/mAP50(M)", "map50_mask"),
    ("metrics/precision(M)", "precision_mask"), ("metrics/recall(M)", "recall_mask"),
    ("metrics/mAP50-95(P)", "map50_95_pose"), ("metrics/mAP50(P)", "map50_pose"),
    ("metrics/precision(P)", "precision_pose"), ("metrics/recall(P)", "recall_pose"),
    ("metrics/accuracy_top1", "top1"), ("metrics/accuracy_top5", "top5"),
    ("metrics/mIoU", "miou"), ("metrics/pixel_acc", "pixel_acc"),
    ("metrics/delta1", "delta1"), ("metrics/delta2", "delta2"), ("metrics/delta3", "delta3"),
    ("metrics/abs_rel", "abs_rel"), ("metrics/rmse", "rmse"), ("metrics/silog", "silog"),
    ("  metrics/mAP50-95(B) ", "map50_95"),  # results.csv headers are padded with spaces
    ("metrics/New Score@0.5", "new_score_0_5"), ("metrics/mAP50(X)", "map50_x"),
    ("epoch", None), ("train/box_loss", None), ("val/dfl_loss", None), ("lr/pg0", None), ("metrics/", None),
])
def test_metric_field(column, field):
    assert metric_field(column) == field


def test_every_selection_column_has_a_field_and_none_is_lower_is_better():
    for task in installed_tasks().tasks:
        field = metric_field(installed_tasks().selection_column(task))
        assert field and field not in LOWER_IS_BETTER
