"""What `slurm-yolo status` and `runs show` print for a person: the task's own metrics."""

from __future__ import annotations

from slurm_yolo.output import print_record

BASE = {"run_id": "20261203_120000_abcdefgh", "project": "p", "model_name": "m", "status": "COMPLETED"}


def test_a_classify_record_shows_top1_and_what_ranks_it(capsys):
    print_record({**BASE, "task": "classify", "fitness_metric": "metrics/accuracy_top1", "metrics": {
        "epochs_done": 3, "best_epoch": 2, "fitness_metric": "metrics/accuracy_top1", "fitness": 0.9,
        "top1": 0.9, "top5": 1.0, "map50": None, "map50_95": None, "precision": None, "recall": None}})
    out = capsys.readouterr().out
    assert "ranked by  metrics/accuracy_top1 = 0.9000 (best epoch 2)" in out
    assert "metrics    top1 0.9000, top5 1.0000" in out
    assert "map50" not in out  # a classify run has no boxes: nothing to show as None


def test_a_segment_record_shows_the_box_set_first_then_the_masks(capsys):
    print_record({**BASE, "task": "segment", "metrics": {
        "fitness_metric": "metrics/mAP50-95(M)", "fitness": 0.3, "map50": 0.5, "map50_95": 0.25,
        "precision": 0.6, "recall": 0.4, "map50_95_mask": 0.3, "map50_mask": 0.55}})
    out = capsys.readouterr().out
    assert "metrics    map50 0.5000, map50_95 0.2500, precision 0.6000, recall 0.4000, map50_95_mask 0.3000, " \
           "map50_mask 0.5500" in out
    assert "ranked by  metrics/mAP50-95(M) = 0.3000" in out


def test_an_older_detect_record_prints_as_before(capsys):
    print_record({**BASE, "task": "detect", "metrics": {"map50": 0.9, "map50_95": 0.6, "epochs_done": 2}})
    out = capsys.readouterr().out
    assert "metrics    map50 0.9000, map50_95 0.6000" in out and "ranked by" not in out
