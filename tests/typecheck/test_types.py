"""The epilog (root, after every job), the write side and the watcher are type-checked
strictly: ``mypy --strict`` over them must stay clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STRICT = ["slurm_yolo/epilog", "slurm_yolo/archive", "slurm_yolo/launcher/watch.py"]


def test_mypy_strict_on_the_epilog_the_write_side_and_the_watcher():
    # Imported modules outside these are checked for what these use, not reported on
    # (follow-imports=silent); third-party packages without stubs are opaque.
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "--ignore-missing-imports", "--no-error-summary", *STRICT],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
