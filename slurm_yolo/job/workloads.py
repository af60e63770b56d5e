"""Stand-in workloads: what runs inside the real job wrapper when training is not what is checked.

:class:`slurm_yolo.job.train.TrainJob` runs a workload inside everything that makes a run
archivable: the attempt record, the signal recording, the ``train.log`` tee, the monitor
thread, the requeue bound and the end-of-attempt record. Its default workload trains with
Ultralytics; :class:`StandIn` takes its place in the cluster end-state tests (and in probes of
an installation) so that a job ends the stated way in seconds, without importing torch:
it sleeps through its "epochs", allocates memory (a cgroup OOM kill), fails, and fills the
run folder the way a training does (``results.csv`` with Ultralytics' own detect header,
``args.yaml``, ``weights/last.pt`` and ``best.pt``, sample images), so that what the epilog
archives is a realistic run folder. It lives in the package, not in the tests: submitit
pickles the job by reference, and the node (the Slurm 24.11 root sees only the venv, /tmp and
/home) must import it.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slurm_yolo import record as rec
from slurm_yolo.job.steps import node_environment
from slurm_yolo.runfolder import ARGS_YAML, BEST_PT, LAST_PT, RESULTS_CSV, WEIGHTS

# The header Ultralytics 8.4 writes for a detect run (tests/data/ultralytics/results_3ep.csv).
RESULTS_HEADER = ("epoch,time,train/box_loss,train/cls_loss,train/dfl_loss,metrics/precision(B),"
                  "metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss,val/cls_loss,"
                  "val/dfl_loss,lr/pg0,lr/pg1,lr/pg2")
STAND_IN = "stand-in"


@dataclass(frozen=True)
class StandIn:
    """A workload that behaves like a short training run, as told.

    Each "epoch" sleeps ``epoch_s``, then appends one row to ``results.csv`` and rewrites
    ``weights/last.pt``. A requeued attempt continues after the rows the earlier ones left
    (as a resumed training does); the last epoch copies ``last.pt`` to ``best.pt``.

    Attributes:
        epochs: epochs of the whole run.
        epoch_s: seconds per epoch.
        requeued_epoch_s: seconds per epoch in an attempt after the first (default ``epoch_s``):
            a first attempt long enough to be pre-empted mid-run, a short second one.
        fail_after: raise after this many epochs of an attempt (the attempt fails); ``None``: never.
        allocate_mb: memory to allocate and touch before the first epoch (over ``slurm.mem``:
            the cgroup OOM-kills the job).
        checkpoint_bytes: payload size of ``weights/last.pt`` (a zip, as torch.save writes).
        images: sample images (``val_batchN.jpg``, 20 kB each) written at the start.
    """

    epochs: int = 2
    epoch_s: float = 0.2
    requeued_epoch_s: float | None = None
    fail_after: int | None = None
    allocate_mb: int = 0
    checkpoint_bytes: int = 4096
    images: int = 0

    def environment(self) -> dict[str, Any]:
        """This node's Python and platform, marked as a stand-in (no torch is imported)."""
        return {**node_environment(), "workload": STAND_IN}

    def train(self, run_dir: Path, config: dict[str, Any], attempt: int) -> None:
        """Sleep through the remaining epochs, filling the run folder; fail or allocate as told."""
        done = len(rec.read_results_rows(run_dir / RESULTS_CSV))
        epoch_s = self.epoch_s if attempt == 1 or self.requeued_epoch_s is None else self.requeued_epoch_s
        _say(f"attempt {attempt}: {self.epochs - done} epoch(s) of {epoch_s} s"
             + (f", continuing after epoch {done}" if done else ""))
        if not (run_dir / ARGS_YAML).exists():
            (run_dir / ARGS_YAML).write_text(yaml.safe_dump({**config.get("train", {}), "workload": STAND_IN}))
        for j in range(self.images):
            (run_dir / f"val_batch{j}.jpg").write_bytes(os.urandom(20_000))
        held = self._allocate()
        weights = run_dir / WEIGHTS
        weights.mkdir(exist_ok=True)
        for n, epoch in enumerate(range(done + 1, self.epochs + 1), start=1):
            time.sleep(epoch_s)
            _write_checkpoint(weights / LAST_PT, epoch, self.checkpoint_bytes)
            _append_row(run_dir / RESULTS_CSV, epoch, self.epochs)
            _say(f"epoch {epoch}/{self.epochs} done")
            if self.fail_after is not None and n >= self.fail_after and epoch < self.epochs:
                raise RuntimeError(f"stand-in failure after epoch {epoch} (fail_after={self.fail_after})")
        if (weights / LAST_PT).exists():
            (weights / BEST_PT).write_bytes((weights / LAST_PT).read_bytes())
        del held

    def follow(self, run_dir: Path, config: dict[str, Any]) -> int:  # noqa: ARG002 - the Workload protocol
        """srun task > 0: nothing to do on the other nodes. Returns this node's index."""
        return int(os.environ.get("SLURM_NODEID", "0") or 0)

    def _allocate(self) -> bytearray | None:
        if self.allocate_mb <= 0:
            return None
        _say(f"allocating {self.allocate_mb} MB")
        block = bytearray(self.allocate_mb << 20)
        for i in range(0, len(block), 4096):  # touch every page: resident, so the cgroup counts it
            block[i] = 1
        return block


def _write_checkpoint(path: Path, epoch: int, size: int) -> None:
    # A zip like torch.save's, written in place as Ultralytics writes last.pt: the monitor's
    # good-checkpoint copy and the epilog see the same kind of file.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", f"epoch={epoch}\n".encode() + os.urandom(max(0, size)))
    path.write_bytes(buf.getvalue())


def _append_row(results_csv: Path, epoch: int, epochs: int) -> None:
    progress = epoch / max(1, epochs)
    loss = round(3.0 - 2.0 * progress, 5)
    row = [epoch, round(0.5 * epoch, 3), loss, loss, loss, round(0.2 + 0.6 * progress, 5),
           round(0.1 + 0.6 * progress, 5), round(0.15 + 0.6 * progress, 5), round(0.1 + 0.5 * progress, 5),
           loss, loss, loss, 0.01, 0.01, 0.01]
    new = not results_csv.exists()
    with open(results_csv, "a", encoding="utf-8") as f:  # one write per row: a kill never leaves half of one
        f.write((RESULTS_HEADER + "\n" if new else "") + ",".join(str(v) for v in row) + "\n")


def _say(message: str) -> None:
    print(f"[slurm-yolo] {STAND_IN}: {message}", flush=True)
