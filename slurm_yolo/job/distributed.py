"""Multi-node training: one torchrun per node, one Ultralytics model across all of them.

Ultralytics trains on the GPUs of one machine only: its trainer takes ``world_size`` from
the local ``device`` list and, unless it already runs inside a torch.distributed worker
(``LOCAL_RANK`` set), launches its own single-node ``torch.distributed.run`` after
*removing the run folder* (``shutil.rmtree(save_dir)`` unless resuming), which would take
``run.json``, ``train.log`` and the Slurm logs with it. So for ``slurm.nodes > 1``:

* every srun task (one per node) starts ``torchrun --nnodes=$SLURM_NNODES
  --node-rank=$SLURM_NODEID --nproc-per-node=G`` with a c10d rendezvous on the first host
  of the job's nodelist (:func:`node_launch`, :func:`torchrun_argv`: pure builders; the job
  runs them through :func:`slurm_yolo.commands.run_foreground`);
* torchrun starts ``python -m slurm_yolo.job.distributed RUN_DIR`` (:func:`main`) in each of
  its G workers. The worker sets up the process group itself (NCCL on GPUs, gloo on CPU),
  lets global rank 0 alone decide resume-or-not and prepare the run folder, broadcasts that
  decision, and trains with a subclass of the task's own trainer
  (:func:`multinode_trainer`) that takes ``world_size`` from ``WORLD_SIZE``. The installed
  Ultralytics is not patched.

Only global rank 0 writes into the run folder (Ultralytics guards its writes with
``RANK in {-1, 0}``; this module does the same for ``train.log`` and ``run.json``). Note
that c10d numbers the nodes by their sorted host names, not by ``--node-rank``: global rank
0 may run on any node, so nothing here assumes it runs beside the srun task that keeps
``run.json``.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from slurm_yolo import record as rec
from slurm_yolo.errors import SlurmYoloError
from slurm_yolo.hostlist import first_host
from slurm_yolo.job.steps import Tee, attempt_number, prepare_step, run_step
from slurm_yolo.runfolder import TRAIN_LOG

# The trainer subclass below overrides private Ultralytics methods (_setup_ddp,
# _setup_train, _build_train_pipeline, final_eval) and relies on the order of the steps inside
# _setup_train (DDP wrap right before the data pipeline is built). Those are not a public
# API and change between releases, so the range is the one it was written and tested
# against (8.4.190); pyproject's `train` extra pins the same range. Outside it, the job
# warns; if one of the hooks is gone, it refuses to start (rather than train wrong).
TESTED_ULTRALYTICS = ((8, 4, 190), (8, 5, 0))  # [from, below)
_HOOKS = ("_setup_ddp", "_setup_train", "_build_train_pipeline", "get_dataloader", "final_eval")
# The rendezvous port: fixed per job (every node computes the same one without talking),
# below Linux's ephemeral range (32768+) so an outgoing connection cannot hold it.
RDZV_PORT_BASE, RDZV_PORT_SPAN = 20000, 10000
# submitit's time-limit / pre-emption warning. The srun task with SLURM_PROCID=0 handles it
# (checkpoint is a no-op, then requeue); torchrun and its workers start with it blocked,
# because its default action would kill them mid-epoch, or mid-write of last.pt.
PREEMPT_SIGNAL = "SIGUSR2"
WORKER_MODULE = "slurm_yolo.job.distributed"


@dataclass(frozen=True)
class NodeLaunch:
    """How this node joins a multi-node run (what torchrun needs), from Slurm's environment.

    Attributes:
        nnodes: nodes in the job (``SLURM_NNODES``).
        node_rank: this node's index (``SLURM_NODEID``).
        nproc_per_node: worker processes on this node: its GPUs, or 1 on CPU.
        rdzv_endpoint: ``HOST:PORT`` of the c10d rendezvous (the nodelist's first host).
        rdzv_id: the rendezvous ID: job ID and restart count, unique per attempt.
        backend: ``nccl`` (GPUs) or ``gloo`` (CPU).
    """

    nnodes: int
    node_rank: int
    nproc_per_node: int
    rdzv_endpoint: str
    rdzv_id: str
    backend: str

    @property
    def world_size(self) -> int:
        """Processes in the whole run."""
        return self.nnodes * self.nproc_per_node

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "world_size": self.world_size}


def backend_for(gpus: int) -> str:
    """The torch.distributed backend: NCCL between GPUs, gloo on CPU."""
    return "nccl" if gpus > 0 else "gloo"


def rendezvous_port(job_id: str) -> int:
    """A port every node of job ``job_id`` derives alike (``20000 + id % 10000``).

    An array element ``123_4`` uses its own job ID's digits (``1234``), so elements that
    share a first node rarely collide.
    """
    digits = "".join(c for c in job_id if c.isdigit())
    if not digits:
        raise SlurmYoloError(f"SLURM_JOB_ID={job_id!r} is not a job ID; multi-node training runs under Slurm")
    return RDZV_PORT_BASE + int(digits) % RDZV_PORT_SPAN


def node_launch(env: Mapping[str, str], gpus: int) -> NodeLaunch:
    """This node's :class:`NodeLaunch` from the srun task's ``SLURM_*`` environment.

    Args:
        env: the task's environment (``SLURM_NNODES``, ``SLURM_NODEID``,
            ``SLURM_JOB_NODELIST``, ``SLURM_JOB_ID``, ``SLURM_RESTART_COUNT``).
        gpus: GPUs this node trains on (0: CPU, one worker).

    Raises:
        SlurmYoloError: a variable is missing or malformed (not inside a Slurm job step).
    """
    def need(*names: str) -> str:
        for name in names:
            if env.get(name):
                return env[name]
        raise SlurmYoloError(f"{names[0]} is not set: slurm.nodes > 1 needs a Slurm job with one srun task per "
                             "node (submit with --executor slurm)")

    job_id = need("SLURM_JOB_ID")
    try:
        nnodes, node_rank = int(need("SLURM_NNODES", "SLURM_JOB_NUM_NODES")), int(need("SLURM_NODEID"))
    except ValueError as e:
        raise SlurmYoloError(f"SLURM_NNODES/SLURM_NODEID are not numbers: {e}") from e
    host = first_host(need("SLURM_JOB_NODELIST", "SLURM_NODELIST"))
    restart = env.get("SLURM_RESTART_COUNT", "0") or "0"
    return NodeLaunch(nnodes=nnodes, node_rank=node_rank, nproc_per_node=max(gpus, 1),
                      rdzv_endpoint=f"{host}:{rendezvous_port(job_id)}", rdzv_id=f"{job_id}-{restart}",
                      backend=backend_for(gpus))


def torchrun_argv(python: str, launch: NodeLaunch, run_dir: str) -> list[str]:
    """``python -m torch.distributed.run …`` that starts this node's workers on ``run_dir``."""
    return [
        python, "-m", "torch.distributed.run",
        f"--nnodes={launch.nnodes}", f"--node-rank={launch.node_rank}",
        f"--nproc-per-node={launch.nproc_per_node}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint={launch.rdzv_endpoint}", f"--rdzv-id={launch.rdzv_id}",
        "--max-restarts=0",  # a failed worker fails the attempt; Slurm's requeue is the retry
        "-m", WORKER_MODULE, run_dir,
    ]


def torchrun_env(env: Mapping[str, str], launch: NodeLaunch) -> dict[str, str]:
    """The workers' environment: the task's, plus a thread count that shares the task's CPUs
    among its workers (torchrun would otherwise set ``OMP_NUM_THREADS=1``, or none at all)."""
    out = dict(env)
    if "OMP_NUM_THREADS" not in out:
        try:
            cpus = int(env.get("SLURM_CPUS_PER_TASK", "1"))
        except ValueError:
            cpus = 1
        out["OMP_NUM_THREADS"] = str(max(1, cpus // launch.nproc_per_node))
    return out


def version_tuple(version: str) -> tuple[int, ...]:
    """``"8.4.190"`` → ``(8, 4, 190)``; stops at the first non-numeric part (``8.5.0rc1`` → ``(8, 5)``)."""
    out = []
    for part in version.split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
        if m.group() != part:
            break
    return tuple(out)


def ultralytics_warning(version: str) -> str | None:
    """A warning if ``version`` lies outside :data:`TESTED_ULTRALYTICS`, else ``None``."""
    low, high = TESTED_ULTRALYTICS
    if low <= version_tuple(version) < high:
        return None
    return (f"ultralytics {version} is outside the range multi-node training was tested with "
            f"(>={'.'.join(map(str, low))},<{'.'.join(map(str, high))}); its trainer internals may differ")


@dataclass(frozen=True)
class WorkerRank:
    """This worker's place in the run, as torchrun sets it (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``)."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerRank:
        try:
            return cls(int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"]),
                       int(env.get("LOCAL_WORLD_SIZE", "1")))
        except (KeyError, ValueError) as e:
            raise SlurmYoloError(f"{WORKER_MODULE} must be started by torchrun (RANK/LOCAL_RANK/WORLD_SIZE: {e})") from e


def multinode_trainer(base: type) -> type:
    """A subclass of Ultralytics trainer ``base`` (e.g. ``DetectionTrainer``) for a process
    group that already spans several nodes.

    Raises:
        SlurmYoloError: this Ultralytics lacks a method the subclass overrides.
    """
    missing = [name for name in _HOOKS if not callable(getattr(base, name, None))]
    if missing:
        raise SlurmYoloError(f"{base.__name__} has no {', '.join(missing)}: this Ultralytics is not one "
                             f"multi-node training supports; install ultralytics in the tested range")
    return type(f"MultiNode{base.__name__}", (_MultiNodeMixin, base), {})


class _MultiNodeMixin:
    """Overrides for Ultralytics' trainer, each for one reason given in its docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Ultralytics counts the local device list (0 on CPU); the run spans every node.
        self.world_size = int(os.environ["WORLD_SIZE"])
        if self.device.type == "cpu":
            # check_amp() turns AMP off on CPU, but on rank 0 only; the broadcast that tells the
            # other ranks is skipped on CPU (see _setup_train), so say it to all of them here.
            self.args.amp = False

    def _setup_ddp(self) -> None:
        """The process group exists already (the worker made it before the trainer: rank 0's
        resume decision is broadcast over it); here only the worker's own GPU is selected.
        Ultralytics' version would call ``init_process_group`` again, and on CPU
        ``cuda.set_device``."""
        import torch
        import torch.distributed as dist

        assert dist.is_initialized(), "the worker sets up the process group before training"
        if self.device.type != "cpu":
            from ultralytics.utils.torch_utils import get_torch_device_backend

            self.device = torch.device(self.device.type, int(os.environ["LOCAL_RANK"]))
            self.accelerator = get_torch_device_backend(self.device)
            self.accelerator.set_device(self.device.index)

    def _setup_train(self) -> None:
        """On CPU, Ultralytics would wrap the model in DDP with ``device_ids=[None]``, which
        DDP refuses for CPU modules: it runs with ``world_size`` 1 (no wrap, no AMP
        broadcast) and :meth:`_build_train_pipeline` wraps the model the CPU way."""
        if self.device.type != "cpu":
            super()._setup_train()
            return
        world_size, self.world_size = self.world_size, 1
        self._cpu_world_size = world_size
        try:
            super()._setup_train()
        finally:
            self.world_size = world_size

    def _build_train_pipeline(self) -> None:
        """Ultralytics calls this right after its (skipped) DDP wrap: wrap for CPU here, and
        restore ``world_size`` so that each rank loads ``batch // world_size`` images."""
        world_size = getattr(self, "_cpu_world_size", None)
        if world_size:
            from torch.nn.parallel import DistributedDataParallel

            self.world_size = world_size
            if not isinstance(self.model, DistributedDataParallel):
                self.model = DistributedDataParallel(self.model, find_unused_parameters=not bool(self.args.compile))
        super()._build_train_pipeline()

    def final_eval(self) -> None:
        """On CPU, only strip the optimizer from ``last.pt``/``best.pt`` (as Ultralytics does:
        a stripped checkpoint marks a finished run, which resume relies on). Its re-validation
        of ``best.pt`` asks CUDA for the device on every DDP rank and fails on CPU; the
        epochs' own validation, shared by all ranks, is in results.csv."""
        if self.device.type != "cpu":
            super().final_eval()
            return
        from ultralytics.utils import LOGGER
        from ultralytics.utils.torch_utils import strip_optimizer, torch_distributed_zero_first

        with torch_distributed_zero_first(int(os.environ["LOCAL_RANK"])):
            if int(os.environ["RANK"]) == 0:
                ckpt = strip_optimizer(self.last) if self.last.exists() else {}
                if self.best.exists():
                    strip_optimizer(self.best, updates={"train_results": ckpt.get("train_results")})
        LOGGER.info("slurm-yolo: final re-validation of best.pt skipped on CPU (multi-node); "
                    "see results.csv for the last epoch's validation")

    def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train"):
        """Build datasets with the *global* rank: Ultralytics lets each node's local rank 0
        write the label ``*.cache`` at once, which races on a shared filesystem."""
        if rank != -1:
            rank = int(os.environ["RANK"])
        return super().get_dataloader(dataset_path, batch_size, rank, mode)


def _init_process_group(ranks: WorkerRank, gpus: int) -> str:
    """Join the run's process group; returns the Ultralytics ``device`` argument."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if gpus > 0:
        if not torch.cuda.is_available():
            raise SlurmYoloError(f"slurm.gpus={gpus} but this node ({socket.gethostname()}) has no CUDA device")
        torch.cuda.set_device(ranks.local_rank)
        os.environ["TORCH_NCCL_BLOCKING_WAIT"] = "1"  # as Ultralytics: collectives time out (read at init)
    # torchrun exported MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE: the default env:// init.
    dist.init_process_group(backend=backend_for(gpus), timeout=timedelta(hours=3))  # Ultralytics' timeout
    return ",".join(str(i) for i in range(ranks.local_world_size)) if gpus > 0 else "cpu"


def _gather_hosts(ranks: WorkerRank) -> list[str]:
    """Every rank's host name, by global rank (proof of who trained, for run.json)."""
    import torch.distributed as dist

    hosts: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(hosts, socket.gethostname())
    return [str(h) for h in hosts]


def _broadcast(value: Any) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _record_world(run_dir: Path, ranks: WorkerRank, hosts: list[str], backend: str) -> None:
    """Rank 0: record the world that actually formed in the current attempt of run.json."""
    world = {"world_size": ranks.world_size, "backend": backend, "hosts": hosts, "rank0_host": hosts[0]}

    def change(r: dict[str, Any]) -> None:
        if r.get("attempts"):
            r["attempts"][-1]["world"] = world

    rec.update_record(run_dir, change)


def run_worker(run_dir: Path, env: Mapping[str, str]) -> None:
    """One torchrun worker: join the process group, agree on the attempt's plan, train."""
    ranks = WorkerRank.from_env(env)
    config = rec.read_record(run_dir)["config"]
    gpus = int(config["slurm"].get("gpus") or 0)
    if ranks.rank == 0:  # before importing ultralytics: its logger keeps the sys.stdout it finds
        log = open(run_dir / TRAIN_LOG, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the worker
        sys.stdout, sys.stderr = Tee(sys.stdout, log), Tee(sys.stderr, log)
    # Before the process group exists: importing ultralytics runs a collective (a barrier
    # around its settings file) once one does, which only a rank-0-only import would reach.
    import torch.distributed as dist
    import ultralytics

    device = _init_process_group(ranks, gpus)
    try:
        hosts = _gather_hosts(ranks)
        step = None
        if ranks.rank == 0:
            print(f"[slurm-yolo] distributed: world_size={ranks.world_size} backend={dist.get_backend()} "
                  f"hosts={hosts}", flush=True)
            _record_world(run_dir, ranks, hosts, dist.get_backend())
            warning = ultralytics_warning(ultralytics.__version__)
            if warning:
                print(f"[slurm-yolo] WARNING: {warning}", file=sys.stderr, flush=True)
            step = prepare_step(run_dir, config, attempt_number())  # rank 0 alone touches the folder
        step = _broadcast(step)
        run_step(step, run_dir, config, device, wrap_trainer=multinode_trainer)
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m slurm_yolo.job.distributed RUN_DIR`` (started by torchrun on every node)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(f"usage: python -m {WORKER_MODULE} RUN_DIR  (started by torchrun)", file=sys.stderr)
        return 2
    try:
        run_worker(Path(args[0]), os.environ)
    except SlurmYoloError as e:
        print(f"[slurm-yolo] {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
