"""The CLI's contract: --help, --dry-run, --json, one-line errors with exit codes, nothing half-done."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_yolo.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "slurm_yolo.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=60)


def test_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("submit", "sweep", "status", "spool", "runs", "reproduce", "index", "store"):
        assert cmd in out.stdout
    listed = " ".join(out.stdout.split())  # argparse wraps long help lines
    for name, (_, line) in COMMANDS.items():
        assert f"{name} {line}" in listed


def test_command_table_is_what_the_rooms_register():
    """`--help` shows the table's lines without importing the rooms: they must say the same."""
    registered = [(a.dest, a.help) for a in _subparsers(build_parser())._choices_actions]  # every room
    assert registered == [(name, line) for name, (_, line) in COMMANDS.items()]
    for name, (room, _) in COMMANDS.items():
        # `slurm-yolo NAME ...` builds NAME's room for real (the others are help lines only)
        real = {n for n, p in _subparsers(build_parser([name, "--help"])).choices.items() if p.add_help}
        assert real == {n for n, (r, _) in COMMANDS.items() if r == room}, name


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _modules_after(argv: list[str]) -> set[str]:
    code = (f"import sys; from slurm_yolo.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


ROOMS_AND_HEAVY = ("slurm_yolo.launcher", "slurm_yolo.catalog", "slurm_yolo.epilog", "slurm_yolo.report",
                   "slurm_yolo.job", "slurm_yolo.archive", "yaml", "rich", "boto3", "submitit", "typing")


def test_help_imports_no_room():
    loaded = _modules_after(["--help"])
    assert not [m for m in loaded if m.startswith(ROOMS_AND_HEAVY)]


def test_a_commands_help_imports_only_its_room():
    loaded = _modules_after(["runs", "list", "--help"])
    assert "slurm_yolo.catalog.cli" in loaded
    assert not [m for m in loaded if m.startswith(("slurm_yolo.launcher", "slurm_yolo.epilog", "slurm_yolo.report",
                                                   "slurm_yolo.job", "submitit"))]


def test_dry_run_json_submits_and_creates_nothing(cfg, tmp_path):
    out = run_cli("submit", cfg, "--dry-run", "--json", "--run-id", "ci-42")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert obj["run_id"] == "ci-42" and obj["job_id"] is None and obj["dry_run"] is True
    assert obj["archive_url"].endswith("/detect/pcb-demo/yolov8n/ci-42/")
    assert "#SBATCH --comment=slurm-yolo:v1:" in obj["script"]
    assert not (tmp_path / "runs").exists()


def test_version_is_the_installed_packages():
    from importlib import metadata

    out = run_cli("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"slurm-yolo {metadata.version('slurm-yolo')}"


def test_launcher_never_imports_torch_ultralytics_or_pyarrow(cfg):
    # pyarrow (with numpy) would add ~0.15 s to every command; only the index commands need it.
    code = (f"import sys; from slurm_yolo.cli import main; rc = main(['submit', {str(cfg)!r}, '--dry-run']); "
            "assert rc == 0; bad = [m for m in ('torch', 'ultralytics', 'pyarrow', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_dry_run_imports_only_the_launcher(cfg):
    """No other room, no job code, no rich or boto3: only what checking and rendering need
    (submitit's renderer is the batch script that would be submitted)."""
    loaded = _modules_after(["submit", str(cfg), "--dry-run", "--json"])
    assert "slurm_yolo.launcher.submit" in loaded and "submitit" in loaded
    assert not [m for m in loaded if m.startswith(("slurm_yolo.catalog", "slurm_yolo.epilog", "slurm_yolo.report",
                                                   "slurm_yolo.job", "rich", "boto3", "botocore"))]


def test_sweep_dry_run_validates_every_element(cfg):
    out = run_cli("sweep", cfg, "--grid", "train.lr0=0.01,0.001", "--grid", "train.batch=4,8", "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert len(obj["elements"]) == 4 and "#SBATCH --array=0-3%4" in obj["script"]
    bad = run_cli("sweep", cfg, "--grid", "train.lr0=0.01,fast", "--grid", "slurm.gpus=1,x", "--dry-run")
    assert bad.returncode == 2 and "slurm.gpus must be int" in bad.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--set", "train.epochs=many"], "train.epochs"),
    (["--set", "slurm.gpu=1"], "did you mean 'gpus'"),
    (["--set", "train.data=/nope/data.yaml"], "does not exist"),
    (["--run-id", "../evil"], "is not a valid name"),
    (["--set", "archive.url=file:///tmp"], "must be an s3://bucket/prefix URL"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_created(cfg, tmp_path, args, fragment):
    out = run_cli("submit", cfg, *args)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slurm-yolo: error:") and fragment in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_failed_sbatch_leaves_no_half_submitted_run(cfg, tmp_path):
    """A unit test of the failure path with a fake sbatch (the real one is used everywhere else)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: debug' >&2\nexit 1\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:/usr/bin:/bin"}
    out = run_cli("submit", cfg, "--json", env=env)
    assert out.returncode == 2 and out.stdout == ""  # the fix is in the config: bad input
    # Slurm's reason once, on one line (submitit's own print of sbatch's stderr is held back)
    assert out.stderr.splitlines() == [
        "slurm-yolo: error: sbatch refused the job: invalid partition specified: debug; check slurm.partition "
        "(`sinfo -s` lists this cluster's partitions); nothing was submitted"]
    assert list((tmp_path / "runs").iterdir()) == []  # the run folder was removed again


def test_status_of_unknown_run(tmp_path):
    out = run_cli("status", "20260101_000000_aaaaaa", "--runs-root", tmp_path)
    assert out.returncode == 1 and "no run folder" in out.stderr and str(tmp_path) in out.stderr
    out = run_cli("status", "20260101_000000_aaaaaa")
    assert out.returncode == 1 and "no run folder" in out.stderr


def test_status_of_a_corrupt_record_is_one_line(tmp_path):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "run.json").write_text('{"run_id": "r1", "sta')  # a torn write by hand
    out = run_cli("status", "r1", "--runs-root", tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "run.json cannot be read" in out.stderr


def test_main_returns_exit_code_in_process(cfg):
    assert main(["submit", str(cfg), "--dry-run", "--json"]) == 0


def test_sync_without_credentials_is_refused_up_front(cfg, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env["HOME"] = str(tmp_path)  # no ~/.aws/credentials either
    out = run_cli("submit", cfg, "--executor", "local", "--set", "archive.sync_every=1m", env=env)
    assert out.returncode == 2 and "in-training sync needs your S3 credentials" in out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
