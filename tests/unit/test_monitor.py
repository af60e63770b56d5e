"""The job monitor's checkpoint keeping and sync command (pure parts, real files)."""

from __future__ import annotations

import zipfile

from slurm_yolo.store import Store
from slurm_yolo.job.monitor import checkpoint_complete, keep_good_checkpoint, sync_argv
from slurm_yolo.runfolder import GOOD_CHECKPOINT
from slurm_yolo.job.train import truncate_results


def _ckpt(path, payload=b"x" * 1000):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)


def test_truncated_checkpoint_is_detected(tmp_path):
    p = tmp_path / "last.pt"
    _ckpt(p)
    assert checkpoint_complete(p)
    p.write_bytes(p.read_bytes()[:-30])
    assert not checkpoint_complete(p)


def test_good_copy_only_of_complete_checkpoints(tmp_path):
    seen: dict = {}
    _ckpt(tmp_path / "last.pt", b"epoch1")
    assert keep_good_checkpoint(tmp_path, seen)
    good = (tmp_path / GOOD_CHECKPOINT).read_bytes()
    assert not keep_good_checkpoint(tmp_path, seen)  # unchanged: nothing to do
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:50])  # killed mid-write
    assert not keep_good_checkpoint(tmp_path, seen)
    assert (tmp_path / GOOD_CHECKPOINT).read_bytes() == good  # the good copy survives
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_truncate_results_drops_redone_epochs(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text("epoch,loss\n1,0.5\n2,0.4\n3,0.3\n")
    assert truncate_results(csv, 2) == 2
    assert csv.read_text() == "epoch,loss\n1,0.5\n2,0.4\n"
    assert truncate_results(tmp_path / "missing.csv", 2) == 0


def test_sync_argv_excludes_and_does_not_follow_links(tmp_path):
    argv = sync_argv(Store(endpoint_url="http://127.0.0.1:1"), tmp_path, "s3://b/p/")
    assert argv[:3] == ["/usr/bin/nice", "-n", "19"] and argv[3].endswith("/s5cmd")
    assert argv[argv.index("sync") + 1] == "--no-follow-symlinks"
    assert "*/.run.lock" in argv and "*/weights/last.good.pt" in argv
    assert "*/.placement.json" in argv  # not in the epilog's archive either
    assert argv[-2:] == [f"{tmp_path}/", "s3://b/p/"]
