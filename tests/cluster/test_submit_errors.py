"""A job the real sbatch refuses: one line with Slurm's reason, exit 2, nothing left behind.

submitit prints a refused sbatch's stderr itself before raising; the user must read Slurm's
reason once, in slurm-yolo's own error line, and find no run (or sweep) folder afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

BIN = Path(sys.executable).parent


@pytest.fixture
def config(dataset):
    cfg = {
        "run": {"task": "detect", "project": "pcb-test", "model_name": "yolov8n"},
        "train": {"model": "yolov8n.yaml", "data": str(dataset), "epochs": 1, "imgsz": 64},
        "slurm": {"partition": "debug", "gpus": 0, "cpus_per_task": 1, "mem": "500M", "time": "00:05:00"},
        "archive": {"url": "s3://slurm-yolo/runs/{user}/test", "sync_every": None},
    }
    path = Path("/tmp") / f"submit-errors-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    yield path
    path.unlink(missing_ok=True)


def slurm_yolo(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "slurm-yolo"), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=120, cwd="/tmp")


def folders_left(runs_root: Path) -> list[str]:
    return sorted(str(p.relative_to(runs_root)) for p in runs_root.rglob("*") if p.is_dir() and p.name != "_sweeps")


@pytest.mark.parametrize("setting, reason, fix", [
    ("slurm.partition=nope", "invalid partition specified: nope (Invalid partition name specified)",
     "check slurm.partition"),
    ("slurm.gpus=1", "Invalid generic resource (gres) specification", "slurm.gpus asks for GPUs"),
    ("slurm.extra.constraint=a100", "Invalid feature specification", "check slurm.extra.constraint"),
])
def test_refused_submit_is_one_line_exit_2_and_leaves_nothing(cluster, config, runs_root, setting, reason, fix):
    out = slurm_yolo(cluster, "submit", config, "--set", setting, "--set", f"runs_root={runs_root}", "--json")
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    (line,) = out.stderr.splitlines()  # not sbatch's raw stderr, then the same again squashed
    assert line.startswith(f"slurm-yolo: error: sbatch refused the job: {reason}; {fix}")
    assert line.endswith("; nothing was submitted")
    assert folders_left(runs_root) == []
    # the dry run asks sbatch --test-only, and refuses alike
    dry = slurm_yolo(cluster, "submit", config, "--set", setting, "--set", f"runs_root={runs_root}", "--dry-run")
    assert (dry.returncode, dry.stderr.splitlines()) == (2, [line])


def test_refused_sweep_removes_every_folder(cluster, config, runs_root):
    out = slurm_yolo(cluster, "sweep", config, "--grid", "train.lr0=0.01,0.001", "--set", "slurm.partition=nope",
                     "--set", f"runs_root={runs_root}")
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.splitlines()
    assert "sbatch refused the job: invalid partition specified: nope" in line
    assert folders_left(runs_root) == []
    assert not any((runs_root / "_sweeps").iterdir())


def test_accepted_submit_has_its_placement(cluster, config, runs_root):
    """The same config with a real partition goes through (the test above is not a broken setup)."""
    dry = slurm_yolo(cluster, "submit", config, "--set", f"runs_root={runs_root}", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["slurm_says"].startswith("Job ")  # sbatch --test-only's estimate
    out = slurm_yolo(cluster, "submit", config, "--set", f"runs_root={runs_root}", "--json", "--set",
                     "slurm.extra.hold=true")  # held: it never runs, it is cancelled below
    assert out.returncode == 0, out.stderr
    handle = json.loads(out.stdout)
    try:
        run_dir = Path(handle["run_dir"])
        placement = json.loads((run_dir / ".placement.json").read_text())
        assert placement["run_id"] == handle["run_id"] and placement["archive_url"] == handle["archive_url"]
    finally:
        subprocess.run(["scancel", handle["job_id"]], env=cluster, timeout=30, check=False)
