"""The task table, read from the installed Ultralytics' source, and the metric field names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slurm_yolo.errors import ConfigError
from slurm_yolo.tasks import (
    DEFAULT_TASK, LOWER_IS_BETTER, TaskTable, find_model_yaml, installed_tasks, metric_field, model_task,
    model_yaml_names,
)

REPO = Path(__file__).resolve().parents[2]


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
    # An interpreter that finds slurm-yolo and PyYAML but no ultralytics: -S -I drop every
    # site-packages folder, and a folder holding links to PyYAML alone takes their place.
    import yaml

    site = tmp_path / "site"
    site.mkdir()
    yaml_dir = Path(yaml.__file__).parent
    for entry in yaml_dir.parent.iterdir():
        if entry.name in ("yaml", "_yaml"):
            (site / entry.name).symlink_to(entry)
    code = ("import sys; sys.path[:0] = [%r, %r]\n"
            "from slurm_yolo.errors import ConfigError\n"
            "from slurm_yolo.tasks import installed_tasks, model_yaml_names, find_model_yaml\n"
            "assert model_yaml_names() == [] and find_model_yaml('yolov8n.yaml') is None\n"
            "try:\n    installed_tasks()\nexcept ConfigError as e:\n    print(e)\n") % (str(REPO), str(site))
    out = subprocess.run([sys.executable, "-S", "-I", "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert out.strip() == f"ultralytics is not installed in {sys.executable}: pip install 'slurm-yolo[train]'"


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


@pytest.mark.parametrize("name, found, task", [
    ("yolov8n.yaml", "v8/yolov8.yaml", "detect"), ("yolov8s-seg.yaml", "v8/yolov8-seg.yaml", "segment"),
    ("yolov8n-cls.yaml", "v8/yolov8-cls.yaml", "classify"), ("yolov8m-pose.yaml", "v8/yolov8-pose.yaml", "pose"),
    ("yolov8n-obb.yaml", "v8/yolov8-obb.yaml", "obb"), ("yolo11n.yaml", "11/yolo11.yaml", "detect"),
    ("yolo11x-seg.yaml", "11/yolo11-seg.yaml", "segment"), ("yolo26n.yaml", "26/yolo26.yaml", "detect"),
    ("yolo26n-sem.yaml", "26/yolo26-sem.yaml", "semantic"), ("yolo26n-depth.yaml", "26/yolo26-depth.yaml", "depth"),
    ("yolo26l-obb.yaml", "26/yolo26-obb.yaml", "obb"), ("yolo26s-pose.yaml", "26/yolo26-pose.yaml", "pose"),
    ("yolov9c-seg.yaml", "v9/yolov9c-seg.yaml", "segment"),  # no scale letter: found as named
    ("yolov8x6.yaml", "v8/yolov8-p6.yaml", "detect"),  # the P6 models' old name, renamed as Ultralytics does
])
def test_model_yamls_resolve_as_ultralytics_resolves_them(name, found, task):
    path = find_model_yaml(name)
    assert path is not None and path.as_posix().endswith("cfg/models/" + found)
    assert model_task(name, path) == task


def test_unknown_model_yamls_are_not_found():
    assert find_model_yaml("yolov8q.yaml") is None
    assert find_model_yaml("../v8/yolov8.yaml") is None  # a name, not a path into the package
    assert "yolov8-seg.yaml" in model_yaml_names() and "yolo26-depth.yaml" in model_yaml_names()


def test_model_task_of_a_local_yaml_is_its_output_module(tmp_path):
    # Named like a detector, built as a classifier: the yaml's head decides, as in Ultralytics.
    yaml_file = tmp_path / "my-net.yaml"
    yaml_file.write_text("nc: 3\nbackbone: [[-1, 1, Conv, [16, 3, 2]]]\nhead: [[-1, 1, Classify, [3]]]\n")
    assert model_task(str(yaml_file), yaml_file) == "classify"


@pytest.mark.parametrize("name, task", [
    ("best.pt", None), ("/runs/x/weights/last.pt", None),  # a checkpoint's task cannot be told without torch
    ("yolo11n-cls.pt", "classify"), ("w/yolo26n-sem.pt", "semantic"), ("yolov8n-seg.pt", "segment"),
    ("yolov8n-pose.pt", "pose"), ("yolov8n-obb.pt", "obb"), ("yolo26n-depth.pt", "depth"),
])
def test_model_task_of_a_checkpoint_from_its_name(name, task):
    assert model_task(name) == task
