"""Dataset identity in every task's layout: the same data gives the same fingerprint, and a
changed image or target (label, mask, depth map, class folder) gives another."""

from __future__ import annotations

import shutil

import pytest

from slurm_yolo.provenance import dataset_identity
from slurm_yolo.synthetic import make_task_dataset

TASKS = ("detect", "segment", "pose", "obb", "classify", "semantic", "depth")


def make(root, task, seed=0):
    kwargs = {} if task == "detect" else {"n_train": 4, "n_val": 2, "size": 32}
    return make_task_dataset(root / task, task, seed=seed, **kwargs)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return {task: make(root, task) for task in TASKS}


def copy(datasets, task, tmp_path):
    """A private copy of one dataset (its data.yaml's absolute path rewritten), to change."""
    src = datasets[task]
    folder = src if src.is_dir() else src.parent
    dst = tmp_path / task
    shutil.copytree(folder, dst)
    if src.is_dir():
        return dst
    data_yaml = dst / "data.yaml"
    data_yaml.write_text(data_yaml.read_text().replace(str(folder), str(dst)))
    return data_yaml


@pytest.mark.parametrize("task", TASKS)
def test_same_data_same_fingerprint_wherever_it_lies(datasets, tmp_path, task):
    first = dataset_identity(datasets[task], task=task)
    assert first["fingerprint"] and first["fingerprint"].startswith("sha256:")
    assert dataset_identity(datasets[task], task=task) == first
    elsewhere = dataset_identity(make(tmp_path, task), task=task)  # regenerated, same seed, other folder
    assert elsewhere["fingerprint"] == first["fingerprint"] and elsewhere["files"] == first["files"]


@pytest.mark.parametrize("task, images, targets", [
    ("detect", 64, 64), ("segment", 6, 6), ("pose", 6, 6), ("obb", 6, 6), ("semantic", 6, 6), ("depth", 6, 6),
    ("classify", 6, 0),
])
def test_every_image_and_target_is_counted(datasets, task, images, targets):
    assert dataset_identity(datasets[task], task=task)["files"] == images + targets


def _rewrite_one(folder, pattern):
    """Rewrite the first file matching ``pattern`` with other content of another size."""
    from PIL import Image

    target = sorted(folder.rglob(pattern))[0]
    if target.suffix == ".txt":
        target.write_text(target.read_text() + "0 0.5 0.5 0.1 0.1\n")
    else:
        with Image.open(target) as img:
            mode, size = img.mode, img.size
        noise = Image.effect_noise(size, 64).convert(mode) if mode != "I;16" else Image.new(mode, size, 4321)
        noise.save(target)
    return target


@pytest.mark.parametrize("task, pattern", [
    ("detect", "labels/train/*.txt"), ("segment", "labels/val/*.txt"), ("pose", "labels/train/*.txt"),
    ("obb", "labels/train/*.txt"), ("semantic", "masks/train/*.png"), ("depth", "depth/val/*.png"),
    ("classify", "train/resistor/*.jpg"), ("segment", "images/train/*.jpg"), ("depth", "images/train/*.jpg"),
])
def test_a_rewritten_image_or_target_changes_the_fingerprint(datasets, tmp_path, task, pattern):
    before = dataset_identity(datasets[task], task=task)["fingerprint"]
    data = copy(datasets, task, tmp_path)
    assert dataset_identity(data, task=task)["fingerprint"] == before  # the copy is the same data
    _rewrite_one(data if data.is_dir() else data.parent, pattern)
    assert dataset_identity(data, task=task)["fingerprint"] != before


def test_semantic_masks_are_found_without_a_masks_dir_key(datasets, tmp_path):
    # Ultralytics reads masks/ when data.yaml names no masks_dir; so does the fingerprint.
    data = copy(datasets, "semantic", tmp_path)
    data.write_text("\n".join(line for line in data.read_text().splitlines() if not line.startswith("masks_dir")))
    assert dataset_identity(data, task="semantic")["files"] == 12
    assert dataset_identity(data)["files"] == 6  # without the task, nothing says masks/ is part of it


def test_depth_maps_are_found_from_depth_scale(datasets):
    assert dataset_identity(datasets["depth"])["files"] == 12


def test_classify_class_folders_are_part_of_the_identity(datasets, tmp_path):
    before = dataset_identity(datasets["classify"], task="classify")
    assert before["classes"] == ["capacitor", "diode", "resistor"]
    assert before["version"] is None and before["path"] == str(datasets["classify"])

    moved = copy(datasets, "classify", tmp_path / "moved")
    image = sorted((moved / "train" / "diode").iterdir())[0]
    image.rename(moved / "train" / "capacitor" / image.name)  # same bytes, another class
    assert dataset_identity(moved, task="classify")["fingerprint"] != before["fingerprint"]

    grown = copy(datasets, "classify", tmp_path / "grown")
    (grown / "train" / "transistor").mkdir()  # an empty class folder is still a class to Ultralytics
    grown_id = dataset_identity(grown, task="classify", declared_version="v2")
    assert grown_id["fingerprint"] != before["fingerprint"] and grown_id["files"] == before["files"]
    assert grown_id["version"] == "v2" and "transistor" in grown_id["classes"]


def test_a_declared_version_wins_over_data_yaml(datasets):
    assert dataset_identity(datasets["segment"])["version"] == "synthetic-segment-v1"
    assert dataset_identity(datasets["segment"], "v7")["version"] == "v7"
