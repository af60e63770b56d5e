"""The synthetic datasets of every task, read back through Ultralytics' own loaders.

What counts is that Ultralytics reads each layout as the task's dataset (polygons as
segments, four keypoints per object, four corners per rotated box, class IDs per mask
pixel, depth in metres, class folders), so these tests build each one with
``ultralytics.data.build.build_yolo_dataset`` / ``check_cls_dataset``, as training does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from slurm_yolo.synthetic import DATASET_TASKS, TASK_LAYOUTS, make_task_dataset

ultralytics = pytest.importorskip("ultralytics")


def _dataset(data_yaml: Path, task: str):
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml), autodownload=False)
    return data, build_yolo_dataset(get_cfg(overrides={"task": task, "imgsz": 64}), data["val"], 2, data, mode="val")


def test_every_ultralytics_task_has_a_synthetic_layout():
    from ultralytics.cfg import TASKS

    assert set(DATASET_TASKS) == set(TASKS)


@pytest.mark.parametrize("task", ["segment", "pose", "obb"])
def test_label_layouts_read_as_the_task(tmp_path, task):
    data, ds = _dataset(make_task_dataset(tmp_path / task, task, n_train=4, n_val=6), task)
    assert len(ds) == 6 and data["names"] == dict(enumerate(TASK_LAYOUTS[task].classes))
    for label in ds.labels:
        n = len(label["cls"])
        assert n >= 1 and label["bboxes"].shape == (n, 4)
        assert (label["bboxes"] > 0).all() and (label["bboxes"] <= 1).all()
        if task == "segment":
            assert len(label["segments"]) == n and all(len(s) >= 4 for s in label["segments"])
        elif task == "obb":  # four corners each, none clipped at the border
            assert len(label["segments"]) == n and all(s.shape == (4, 2) for s in label["segments"])
            assert all(((s > 0) & (s < 1)).all() for s in label["segments"])
        else:
            assert data["kpt_shape"] == [4, 3] and data["flip_idx"] == [0, 3, 2, 1]
            kpts = label["keypoints"]
            assert kpts.shape == (n, 4, 3) and (kpts[..., 2] == 2).all()
            # top, right, bottom, left: the order flip_idx assumes
            assert (kpts[:, 0, 1] < kpts[:, 2, 1]).all() and (kpts[:, 3, 0] < kpts[:, 1, 0]).all()


def test_semantic_masks_hold_class_ids(tmp_path):
    data, ds = _dataset(make_task_dataset(tmp_path / "sem", "semantic", n_train=4, n_val=4), "semantic")
    assert data["masks_dir"] == "masks" and type(ds).__name__ == "SemanticDataset"
    seen = set()
    for i in range(len(ds)):
        mask = np.asarray(ds[i]["semantic_mask"])
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 1, 2}  # board, copper, defect: every class appears, nothing else


def test_depth_maps_are_metres(tmp_path):
    data, ds = _dataset(make_task_dataset(tmp_path / "depth", "depth", n_train=4, n_val=4), "depth")
    assert data["depth_scale"] == 1000 and type(ds).__name__ == "DepthDataset"
    depth = np.asarray(ds[0]["depth"], dtype=np.float32)
    valid = depth[depth > 0]
    assert valid.size > 0.9 * depth.size  # the letterbox may pad; the map itself has no holes
    assert 0.5 <= valid.min() and valid.max() <= 4.01


def test_classify_is_a_folder_of_class_folders(tmp_path):
    from ultralytics.data.utils import check_cls_dataset

    root = make_task_dataset(tmp_path / "cls", "classify", n_train=9, n_val=6)
    assert root.is_dir() and not (root / "data.yaml").exists()
    info = check_cls_dataset(str(root))
    assert info["nc"] == 3 and sorted(info["names"].values()) == sorted(TASK_LAYOUTS["classify"].classes)
    for split, n in (("train", 3), ("val", 2)):
        assert all(len(list((root / split / c).glob("*.jpg"))) == n for c in TASK_LAYOUTS["classify"].classes)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".cache"):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("task", sorted(TASK_LAYOUTS))
def test_same_seed_same_dataset(tmp_path, task):
    def content(seed: int, name: str) -> str:
        out = make_task_dataset(tmp_path / name, task, n_train=3, n_val=2, seed=seed)
        root = out if out.is_dir() else out.parent
        # data.yaml names its own folder; everything else must be the same bytes
        return _digest(root) if task == "classify" else "".join(
            _digest(root / d) for d in ("images", "labels", "masks", "depth") if (root / d).is_dir())

    assert content(0, "a") == content(0, "b") != content(1, "c")


def test_unknown_task_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no synthetic dataset for task 'keypoints'"):
        make_task_dataset(tmp_path, "keypoints")
