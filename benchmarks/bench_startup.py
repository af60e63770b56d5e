"""Benchmark: how long a `slurm-yolo` command takes to start, this checkout against an older commit.

Every command a user types pays the CLI's import time before it does anything: ``--help``,
``submit --dry-run`` (no Slurm call), ``runs list --help``. Both trees
run on the same interpreter and venv, alternating, as ``python -c "<argv>"`` with the tree
first on ``sys.path``, so only the code differs. The older tree is a ``git worktree`` of
``--base`` (default: the last commit that imported pyarrow at module level), removed after.

Printed: the median and min of ``--repeat`` runs per command and tree, and the ratio
old/new, plus the load average. Run:
``python benchmarks/bench_startup.py [--base b7020c5] [--repeat 15]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = "b7020c5"  # the last commit whose index modules imported pyarrow (and numpy) at start-up
CONFIG = ROOT / "configs" / "pcb.yaml"
COMMANDS = {
    "--help": ["--help"],
    "submit --dry-run": ["submit", str(CONFIG), "--dry-run", "--json", "--run-id", "bench-1"],
    "runs list --help": ["runs", "list", "--help"],
}


def one_run(tree: Path, argv: list[str]) -> float:
    """Wall seconds of one ``slurm-yolo ARGV`` from ``tree``, in a fresh interpreter."""
    code = (f"import sys; sys.path.insert(0, {str(tree)!r}); from slurm_yolo.cli import main; "
            f"sys.exit(main({argv!r}))")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=tempfile.gettempdir(), check=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=BASE, help="the older commit to compare with (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=15, help="runs per command and tree (default %(default)s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.base], cwd=ROOT, check=True)
        try:
            for tree in (old, ROOT):  # warm the page cache and the byte-code caches
                one_run(tree, ["--help"])
            print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
                  f"{args.repeat} runs each, alternating; old = {args.base}, new = this checkout\n")
            print("| command | old median (min) | new median (min) | old / new |")
            print("|---|---|---|---|")
            for name, argv in COMMANDS.items():
                times: dict[str, list[float]] = {"old": [], "new": []}
                for _ in range(args.repeat):
                    times["old"].append(one_run(old, argv))
                    times["new"].append(one_run(ROOT, argv))
                med = {k: statistics.median(v) for k, v in times.items()}
                print(f"| `slurm-yolo {name}` | {med['old']:.3f} s ({min(times['old']):.3f}) "
                      f"| {med['new']:.3f} s ({min(times['new']):.3f}) | {med['old'] / med['new']:.2f}x |")
            print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
