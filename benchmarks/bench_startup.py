"""Benchmark: how long a `slurm-yolo` command takes to start, this checkout against an older commit.

Every command a user types pays the CLI's import time before it does anything: ``--help``,
``submit --dry-run`` (no Slurm call), ``runs list --help``. Both trees
run on the same interpreter and venv, alternating, as ``python -c "<argv>"`` with the tree
first on ``sys.path``, so only the code differs. The older tree is a ``git worktree`` of
``--base`` (default: the last commit whose CLI imported every room at start-up), removed after.
``python -c pass`` runs in the same rotation: the interpreter's own start, the floor.

Printed: the median and min of ``--repeat`` runs per command and tree, the ratio old/new,
and new / ``python -c pass``, plus the load average. Run:
``python benchmarks/bench_startup.py [--base 047fd85] [--repeat 15]``.
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
BASE = "047fd85"  # the last commit whose CLI imported every room (catalog, epilog, report, rich, yaml) at start-up
CONFIG = ROOT / "configs" / "pcb.yaml"


def commands(tmp: Path) -> dict[str, list[str]]:
    """The timed commands; ``submit --dry-run`` on a config it accepts (configs/pcb.yaml with a
    dataset that exists and no in-training sync), so that it is timed to its end, not to an error."""
    import yaml

    data = tmp / "data" / "data.yaml"
    data.parent.mkdir()
    data.write_text("path: .\ntrain: images\nval: images\nnames: {0: a}\n")
    raw = yaml.safe_load(CONFIG.read_text())
    raw["train"]["data"] = str(data)
    raw["runs_root"] = str(tmp / "runs")
    raw["archive"]["sync_every"] = None
    config = tmp / "bench.yaml"
    config.write_text(yaml.safe_dump(raw))
    return {
        "--help": ["--help"],
        "submit --dry-run": ["submit", str(config), "--dry-run", "--json", "--run-id", "bench-1"],
        "runs list --help": ["runs", "list", "--help"],
    }


def one_run(tree: Path | None, argv: list[str]) -> float:
    """Wall seconds of one ``slurm-yolo ARGV`` from ``tree``, in a fresh interpreter
    (``tree=None``: ``python -c pass``)."""
    code = "pass" if tree is None else (f"import sys; sys.path.insert(0, {str(tree)!r}); "
                                        f"from slurm_yolo.cli import main; sys.exit(main({argv!r}))")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=tempfile.gettempdir(), check=False)
    return time.perf_counter() - start


def check_succeeds(tree: Path, argv: list[str]) -> None:
    """A timed command must succeed in both trees: an error path would be timed instead."""
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from slurm_yolo.cli import main; sys.exit(main({argv!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        sys.exit(f"slurm-yolo {' '.join(argv)} fails in {tree} (exit {out.returncode}): {out.stderr.strip()[-300:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=BASE, help="the older commit to compare with (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=15, help="runs per command and tree (default %(default)s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.base], cwd=ROOT, check=True)
        try:
            timed = commands(Path(tmp))
            for tree in (old, ROOT):  # also warms the page cache and the byte-code caches
                for argv in timed.values():
                    check_succeeds(tree, argv)
            print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
                  f"{args.repeat} runs each, alternating; old = {args.base}, new = this checkout\n")
            print("| command | old median (min) | new median (min) | old / new | new / `python -c pass` |")
            print("|---|---|---|---|---|")
            floor: list[float] = []
            rows = []
            for name, argv in timed.items():
                times: dict[str, list[float]] = {"old": [], "new": []}
                for _ in range(args.repeat):
                    times["old"].append(one_run(old, argv))
                    times["new"].append(one_run(ROOT, argv))
                    floor.append(one_run(None, []))
                rows.append((name, times))
            base = statistics.median(floor)
            for name, times in rows:
                med = {k: statistics.median(v) for k, v in times.items()}
                print(f"| `slurm-yolo {name}` | {med['old']:.3f} s ({min(times['old']):.3f}) "
                      f"| {med['new']:.3f} s ({min(times['new']):.3f}) | {med['old'] / med['new']:.2f}x "
                      f"| {med['new'] / base:.1f}x |")
            print(f"| `python -c pass` | | {base:.3f} s ({min(floor):.3f}) | | 1.0x |")
            print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
