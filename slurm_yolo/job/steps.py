"""How one attempt trains, shared by the single-node job (:mod:`slurm_yolo.job.train`) and the
multi-node workers (:mod:`slurm_yolo.job.distributed`): the attempt number and the requeue
bound, the workload protocol, which checkpoint to resume from, how the run folder is
prepared for it, and the Ultralytics call. torch and ultralytics are imported inside the
functions: this module is imported on the login node with the job.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from slurm_yolo.config import SCHEMA
from slurm_yolo.runfolder import GOOD_CHECKPOINT, LAST_PT, RESULTS_CSV, WEIGHTS


def attempt_number() -> int:
    """1-based attempt number: Slurm's restart count + 1 (submitit requeues keep the job ID)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0")) + 1
    except ValueError:
        return 1


def attempt_limit(config: Mapping[str, Any]) -> int:
    """How many attempts a run gets: the first one plus ``slurm.max_requeues`` requeues.

    Args:
        config: the run's resolved config (``run.json``'s ``config``); a config without the
            key gets the config schema's default.
    """
    slurm = config.get("slurm") or {}
    return int(slurm.get("max_requeues", SCHEMA["slurm"]["max_requeues"][1])) + 1


def may_train(config: Mapping[str, Any], attempt: int) -> bool:
    """Whether attempt ``attempt`` (1-based) is within the run's bound and may train."""
    return attempt <= attempt_limit(config)


def may_requeue(config: Mapping[str, Any], attempt: int) -> bool:
    """Whether attempt ``attempt`` may ask for one more: only if that one is within the bound."""
    return may_train(config, attempt + 1)


class Workload(Protocol):
    """What an attempt runs inside :class:`slurm_yolo.job.train.TrainJob` (which keeps the
    record, the signals, the log, the monitor and the requeues around it)."""

    def environment(self) -> dict[str, Any]:
        """What run.json's ``environment`` records for this node."""

    def train(self, run_dir: Path, config: dict[str, Any], attempt: int) -> None:
        """Run attempt ``attempt`` (1-based) into ``run_dir``; raise to fail the attempt."""

    def follow(self, run_dir: Path, config: dict[str, Any]) -> int:
        """srun task > 0 of a multi-node job: this node's share. Returns the node's rank."""


def node_environment() -> dict[str, Any]:
    """Python, node and platform of this process (no torch: what every workload records)."""
    return {"python": platform.python_version(), "node": socket.gethostname(), "platform": platform.platform()}


class Tee:
    """Writes to the original stream and to the run's ``train.log``."""

    def __init__(self, stream, log) -> None:
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._log.write(text)
        self._log.flush()
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)

@dataclass(frozen=True)
class TrainStep:
    """What an attempt does: ``fresh`` (train from scratch), ``resume`` (from ``checkpoint``)
    or ``done`` (``checkpoint`` is the final one: nothing left to train)."""

    kind: str
    checkpoint: str | None = None

def prepare_step(run_dir: Path, config: dict[str, Any], attempt: int) -> TrainStep:
    """Decide how this attempt trains and prepare the run folder for it (restores a good
    ``last.pt``, trims ``results.csv`` to the checkpoint's epoch). One process per run calls it."""
    resume = find_resume_checkpoint(run_dir) if attempt > 1 or (run_dir / WEIGHTS / LAST_PT).exists() else None
    if resume is None:
        if attempt > 1:  # the earlier attempt left no loadable checkpoint: start over, cleanly
            print("[slurm-yolo] no usable checkpoint: training starts over", file=sys.stderr, flush=True)
            (run_dir / RESULTS_CSV).unlink(missing_ok=True)
        return TrainStep("fresh")
    path, epoch = resume
    if epoch is None or epoch + 1 >= int(config["train"].get("epochs", 100)):
        print(f"[slurm-yolo] {path.name} is the final checkpoint: training already finished", flush=True)
        return TrainStep("done", str(path))
    kept = truncate_results(run_dir / RESULTS_CSV, epoch + 1)
    print(f"[slurm-yolo] resuming from {path} (epoch {epoch + 1} done; results.csv rows kept: {kept})",
          flush=True)
    return TrainStep("resume", str(path))

def run_step(step: TrainStep, run_dir: Path, config: dict[str, Any], device: Any,
             wrap_trainer: Callable[[type], type] | None = None) -> None:
    """Train as ``step`` says, into the run folder.

    Args:
        step: from :func:`prepare_step`.
        run_dir: the run folder (Ultralytics' ``project/name``).
        config: the run's resolved config.
        device: the Ultralytics ``device`` argument.
        wrap_trainer: turns the trainer class Ultralytics picks for the task into the one to
            use (multi-node: :func:`slurm_yolo.job.distributed.multinode_trainer`).
    """
    from ultralytics import YOLO

    if step.kind == "done":
        return
    args = dict(config["train"])
    model = YOLO(step.checkpoint if step.kind == "resume" else args.pop("model"))
    extra = {"trainer": wrap_trainer(model._smart_load("trainer"))} if wrap_trainer else {}
    if step.kind == "fresh":
        args.update(project=str(run_dir.parent), name=run_dir.name, exist_ok=True, device=device)
        model.train(**extra, **args)
        return
    # Only what Ultralytics allows to change on resume; the rest comes from the checkpoint.
    model.train(resume=True, device=device, workers=args.get("workers", 8), **extra)

def find_resume_checkpoint(run_dir: Path) -> tuple[Path, int | None] | None:
    """The checkpoint to resume from and its last completed epoch (0-based), or ``None``.

    ``weights/last.pt`` if it loads, else the monitor's ``weights/last.good.pt``: a
    ``last.pt`` truncated by a kill during its write must never break resume. A damaged
    ``last.pt`` is replaced by the good copy so Ultralytics keeps writing a sane file.
    """
    import torch

    weights = run_dir / WEIGHTS
    for name in (LAST_PT, GOOD_CHECKPOINT):
        path = weights / name
        if not path.is_file():
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # a truncated zip, a bad pickle: try the next candidate
            print(f"[slurm-yolo] checkpoint {path} is unusable ({type(e).__name__}: {e}); trying the next",
                  file=sys.stderr, flush=True)
            continue
        epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
        if ckpt.get("optimizer") is None:  # a final, stripped checkpoint: nothing to resume
            epoch = None
        if name != LAST_PT:
            tmp = weights / f".{LAST_PT}.restore.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, weights / LAST_PT)
            path = weights / LAST_PT
        return path, epoch
    return None

def truncate_results(results_csv: Path, max_epoch: int) -> int:
    """Drop rows after ``max_epoch`` (1-based) from results.csv, so a resumed run that redoes
    an epoch does not list it twice. Returns the number of data rows kept."""
    try:
        lines = results_csv.read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return 0
    header, rows = lines[:1], lines[1:]
    kept = [r for r in rows if r.strip() and _epoch_of(r) is not None and _epoch_of(r) <= max_epoch]
    if len(kept) != len(rows):
        tmp = results_csv.with_name(f".{results_csv.name}.tmp")
        tmp.write_text("".join(header + kept))
        os.replace(tmp, results_csv)
    return len(kept)

def _epoch_of(row: str) -> int | None:
    try:
        return int(float(row.split(",")[0]))
    except ValueError:
        return None
