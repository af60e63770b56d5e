"""The demo's pieces: the learnable synthetic preset, and an error that names the dataset fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slurm_yolo.config import load_config
from slurm_yolo.errors import ConfigError
from slurm_yolo.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[2]


def test_demo_preset_has_two_large_classes_with_tight_boxes(tmp_path):
    pytest.importorskip("PIL")
    data = yaml.safe_load(make_dataset(tmp_path, n_train=12, n_val=4, preset="demo").read_text())
    assert data["names"] == {0: "missing_hole", 1: "short"} and data["version"] == "synthetic-demo-v1"
    boxes = [line.split() for p in (tmp_path / "labels" / "train").glob("*.txt") for line in p.read_text().splitlines()]
    assert len(boxes) >= 12
    for cls, xc, yc, w, h in boxes:
        xc, yc, w, h = map(float, (xc, yc, w, h))
        assert cls in ("0", "1") and 0.15 <= w <= 0.35 and 0 < h <= w  # a quarter of the image, ±25 %
        assert 0 <= xc - w / 2 and xc + w / 2 <= 1 and 0 <= yc - h / 2 and yc + h / 2 <= 1


def test_default_preset_is_unchanged(tmp_path):
    pytest.importorskip("PIL")
    data = yaml.safe_load(make_dataset(tmp_path, n_train=2, n_val=1).read_text())
    assert len(data["names"]) == 4 and data["version"] == "synthetic-v1"


@pytest.mark.parametrize("config, command", [
    ("pcb.yaml", "python -m slurm_yolo.synthetic {repo}/datasets/pcb"),
    ("demo.yaml", "python -m slurm_yolo.synthetic {repo}/datasets/demo --preset demo"),
])
def test_missing_dataset_error_prints_the_command_that_makes_it(tmp_path, monkeypatch, config, command):
    raw = yaml.safe_load((REPO / "configs" / config).read_text())
    copy = tmp_path / config
    copy.write_text(yaml.safe_dump(raw))
    # A fresh checkout without datasets/: relative data paths resolve from the working folder.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config(str(copy), [])
    assert command.format(repo=tmp_path) in str(e.value)
