"""The training job: a submitit callable that runs on the compute node.

:class:`TrainJob` is the wrapper every attempt goes through: it records the attempt in
``run.json`` (node, start, end, status, epoch reached, signals received), tees the output to
``train.log``, runs the monitor thread (good checkpoints, in-training sync), bounds the
requeues, and records the end of the attempt. Signals are recorded *before* the job exits
so that the epilog can later tell a cancel or a time-out (SIGTERM, USR2) from a crash.

What runs inside the wrapper is its workload: :class:`UltralyticsTraining` (the default)
trains with Ultralytics straight into the run folder (``weights/``, ``results.csv``,
``args.yaml``, plots); :mod:`slurm_yolo.job.workloads` has small stand-ins (sleep, allocate,
fail, write a run folder's files) for checks of everything around training. torch and
ultralytics are imported only inside the default workload, on the node.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from slurm_yolo import record as rec
from slurm_yolo.store import Store
from slurm_yolo.commands import run_command, run_foreground
from slurm_yolo.timeparse import duration_seconds
from slurm_yolo.errors import SlurmYoloError
from slurm_yolo.scontrol import parse_scontrol
from slurm_yolo.runfolder import GOOD_CHECKPOINT, RESULTS_CSV, SLURM_LOGS, TRAIN_LOG, WEIGHTS, attempt_banner
from slurm_yolo.states import JobStatus
from slurm_yolo.job.distributed import PREEMPT_SIGNAL, NodeLaunch, node_launch, torchrun_argv, torchrun_env
from slurm_yolo.job.monitor import RunMonitor
from slurm_yolo.job.steps import (  # noqa: F401 - part of this module's API
    Tee as _Tee, TrainStep, Workload, attempt_limit, attempt_number, find_resume_checkpoint, may_requeue, may_train,
    node_environment, prepare_step, run_step, truncate_results,
)

RECORDED_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")


def task_rank() -> int:
    """This srun task's index in the job step (``SLURM_PROCID``; 0 outside Slurm): 0 keeps run.json."""
    try:
        return int(os.environ.get("SLURM_PROCID", "0"))
    except ValueError:
        return 0


def _current_attempt(record: dict[str, Any]) -> dict[str, Any]:
    return record["attempts"][-1]


def _new_attempt() -> dict[str, Any]:
    return {
        "attempt": attempt_number(),
        "node": socket.gethostname(),
        "start": rec.utc_now(),
        "end": None,
        "status": JobStatus.RUNNING,
        "end_state": None,
        "epoch": None,
        "signals": [],
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def _start_attempt(r: dict[str, Any], attempt: dict[str, Any]) -> None:
    # An earlier attempt killed before the epilog could record it did end, at the latest now.
    for old in r["attempts"]:
        if old.get("end") is None:
            old["end"] = attempt["start"]
    r["attempts"].append(attempt)
    r["status"] = JobStatus.RUNNING
    r["end_state"] = None
    r["slurm"].update({k: v for k, v in {
        "job_id": _slurm_job_id(), "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }.items() if v is not None})


class Terminated(SystemExit):
    """Raised in the main thread after SIGTERM so that the attempt ends now, not at Slurm's
    SIGKILL ``KillWait`` later; a ``SystemExit``, so no ``except Exception`` in a library keeps
    training. Its code is the shell's for death by that signal (143)."""


# Functions that write the run's files: pathlib's (Ultralytics writes last.pt and best.pt with
# Path.write_bytes), results.csv's row, the final stripped checkpoint (torch.save to its path,
# through Ultralytics' torch_save too), the stand-in's. A stop raised inside one would leave a
# truncated file, so the stop waits until the main thread is out of them. Not save_model as a
# whole: its deepcopy and serialisation write nothing and take seconds on a loaded node.
IN_PLACE_WRITERS = frozenset({"write_bytes", "write_text", "save_metrics", "strip_optimizer", "torch_save",
                              "_write_checkpoint", "_append_row"})
# How soon a stop deferred by a write in flight looks again (checkpoint writes take ~10-500 ms).
STOP_RETRY_S = 0.05


def writing_in_place(frame) -> bool:
    """Whether the interrupted stack ``frame`` is inside one of :data:`IN_PLACE_WRITERS`."""
    while frame is not None:
        if frame.f_code.co_name in IN_PLACE_WRITERS:
            return True
        frame = frame.f_back
    return False


def job_state_argv(job_id: str) -> list[str]:
    """``scontrol -o show job ID``: one line, whose ``JobState=`` tells why the SIGTERM came."""
    return ["scontrol", "-o", "show", "job", job_id]


def ended_by_slurm(scontrol_text: str) -> bool:
    """Whether ``scontrol -o show job`` output says Slurm no longer runs the job: cancelled,
    timed out, being requeued or completing. ``RUNNING`` is a pre-emption's grace time (a job
    that ends then by itself is not requeued: Slurm counts it as finished) or a bare
    ``scancel --signal=TERM``; unknown output keeps the job training too."""
    state = parse_scontrol(scontrol_text).get("JobState")
    return bool(state) and state not in ("RUNNING", "SUSPENDED", "CONFIGURING")


def should_stop(env: Mapping[str, str], ask: Callable[[list[str]], str]) -> bool:
    """Whether SIGTERM ends the attempt now: always outside Slurm (nobody else will end it);
    under Slurm only when the job's state says Slurm is ending it (:func:`ended_by_slurm`),
    asked through ``ask`` (runs argv, returns stdout; raises on failure: then keep training,
    and Slurm's own SIGKILL ends the job as before)."""
    job_id = env.get("SLURM_JOB_ID")
    if not job_id:
        return True
    try:
        return ended_by_slurm(ask(job_state_argv(job_id)))
    except Exception:  # no scontrol, no answer: the old behaviour, never a lost requeue
        return False


def _ask(argv: list[str]) -> str:
    return run_command(argv, "check why SIGTERM came", timeout=15).stdout


class SignalRecorder:
    """Records every signal in ``run.json`` (with time), hands it to the previous handler, and
    ends the attempt promptly on SIGTERM.

    submitit installs its own USR2 handler (checkpoint + requeue) before calling the job; we
    chain to it so both happen. SIGTERM (scancel, time limit, requeue, pre-emption) is recorded
    first, so the epilog can tell a cancel from a crash; then, while :meth:`armed`, the main
    thread gets :class:`Terminated` at the next point where it is not writing the run's files
    (:data:`IN_PLACE_WRITERS`; it looks again every :data:`STOP_RETRY_S` until then). Training
    on until Slurm's SIGKILL only delayed the epilog by ``KillWait`` (30 s by default), and
    the archive is the epilog's, not this process's: the last completed epoch's checkpoint is
    on disk either way.

    Args:
        run_dir: the run folder whose ``run.json`` records the signals.
        on_terminate: called once, from the handler, when SIGTERM first arrives (stops the
            monitor's syncs: nothing new should start while the job ends).
    """

    def __init__(self, run_dir: Path, on_terminate: Callable[[], None] | None = None,
                 ask: Callable[[list[str]], str] = _ask) -> None:
        self.run_dir = run_dir
        self.on_terminate = on_terminate
        self.ask = ask
        self.previous: dict[int, Any] = {}
        self.terminating = False  # SIGTERM came
        self.stopping = False  # ... and ends the attempt (should_stop)
        self._armed = False
        self._retry_pending = False

    def install(self) -> None:
        for name in RECORDED_SIGNALS:
            signum = getattr(signal, name)
            self.previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    @contextmanager
    def armed(self) -> Iterator[None]:
        """While inside, SIGTERM raises :class:`Terminated` (at a safe point); outside it is
        only recorded: the attempt's own end (its record, the monitor) must not be cut short."""
        self._armed = True
        try:
            if self.stopping:  # it came before we were armed
                raise Terminated(128 + signal.SIGTERM)
            yield
        finally:
            self._armed = False

    def _handle(self, signum: int, frame) -> None:
        retry, self._retry_pending = self._retry_pending and signum == signal.SIGTERM, False
        if not retry:
            self._record(signum, frame)
        if signum != signal.SIGTERM:
            return
        if not self.terminating:
            self.terminating = True
            if self.on_terminate:
                try:
                    self.on_terminate()
                except Exception as e:  # stopping the side thread must never be what fails the stop
                    print(f"[slurm-yolo] on SIGTERM: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            # Asking Slurm takes a subprocess: off the main thread, which trains on meanwhile.
            threading.Thread(target=self._decide, name="slurm-yolo-sigterm", daemon=True).start()
            return
        if not (self._armed and self.stopping):
            return
        if writing_in_place(frame):
            self._poke(STOP_RETRY_S)
            return
        print(f"[slurm-yolo] ending the attempt on SIGTERM at {_utc_ms()} (the epilog archives the run folder)",
              file=sys.stderr, flush=True)
        raise Terminated(128 + signum)

    def _decide(self) -> None:
        if should_stop(os.environ, self.ask):
            self.stopping = True
            self._poke(0)
        else:
            print("[slurm-yolo] SIGTERM while Slurm still runs the job (pre-emption grace time?): "
                  "training on until Slurm ends it", file=sys.stderr, flush=True)

    def _poke(self, after_s: float) -> None:
        """SIGTERM to the main thread ``after_s`` from now, marked as ours (not recorded again)."""
        self._retry_pending = True
        timer = threading.Timer(after_s, signal.pthread_kill, (threading.main_thread().ident, signal.SIGTERM))
        timer.daemon = True
        timer.start()

    def _record(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        entry = {"signal": name, "time": rec.utc_now()}
        try:
            rec.update_record(self.run_dir, lambda r: _current_attempt(r).setdefault("signals", []).append(entry))
        except Exception as e:  # recording must never be what kills the job
            print(f"[slurm-yolo] could not record {name}: {e}", file=sys.stderr, flush=True)
        print(f"[slurm-yolo] received {name} at {_utc_ms()}", file=sys.stderr, flush=True)
        prev = self.previous.get(signum)
        if callable(prev):
            prev(signum, frame)


def _utc_ms() -> str:
    """Now in UTC with milliseconds, for log lines (the teardown's timeline in
    benchmarks/bench_time_to_safe.py reads them); records keep rec.utc_now's seconds."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def environment() -> dict[str, Any]:
    """Python, torch, ultralytics, CUDA and GPU of this node (imports torch)."""
    import torch
    import ultralytics

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        **node_environment(),
        "torch": torch.__version__,
        "ultralytics": ultralytics.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": gpus[0] if gpus else None,
        "gpus": gpus,
    }


def device_for(gpus_requested: int) -> Any:
    """The Ultralytics ``device`` argument: GPUs Slurm gave us (N > 1 → DDP list), else CPU."""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    n = min(gpus_requested, visible)
    if n <= 0:
        return "cpu"
    return 0 if n == 1 else list(range(n))


class UltralyticsTraining:
    """The default workload: train with Ultralytics as the run's config says.

    One node with at most one GPU trains in this process; several GPUs or nodes go through
    one torchrun per node (:func:`train_multinode`).
    """

    def environment(self) -> dict[str, Any]:
        """Python, torch, ultralytics, CUDA and GPU of this node (imports torch)."""
        return environment()

    def train(self, run_dir: Path, config: dict[str, Any], attempt: int) -> None:
        """Train attempt ``attempt`` (1-based) into ``run_dir``: fresh, resumed, or nothing left."""
        # Several GPUs on one node go through torchrun too: Ultralytics' own DDP launcher
        # (generate_ddp_command) deletes save_dir, i.e. the run folder with run.json, on a
        # fresh start. torchrun sets LOCAL_RANK, so Ultralytics never starts that launcher.
        if int(config["slurm"].get("nodes") or 1) > 1 or int(config["slurm"].get("gpus") or 0) > 1:
            def record_launch(launch: NodeLaunch) -> None:
                rec.update_record(run_dir, lambda r: _current_attempt(r).update(launch=launch.to_dict()))

            train_multinode(run_dir, config, on_launch=record_launch)
            return
        device = device_for(int(config["slurm"].get("gpus") or 0))
        run_step(prepare_step(run_dir, config, attempt), run_dir, config, device)

    def follow(self, run_dir: Path, config: dict[str, Any]) -> int:
        """srun task > 0 of a multi-node job: this node's torchrun. Returns the node rank."""
        return train_multinode(run_dir, config).node_rank


class TrainJob:
    """The submitit callable: ``TrainJob()(run_dir)`` runs an attempt of the run in ``run_dir/run.json``.

    Args:
        workload: what the attempt runs inside the wrapper (default :class:`UltralyticsTraining`);
            it must pickle, since submitit sends it to the node.
    """

    def __init__(self, workload: Workload | None = None) -> None:
        self.workload: Workload = UltralyticsTraining() if workload is None else workload
        self.requeuing = False

    def __call__(self, run_dir: str) -> dict[str, Any]:
        if task_rank() > 0:
            return self._follow(Path(run_dir))
        run_dir = Path(run_dir)
        started = time.time()
        attempt = _new_attempt()
        record = rec.update_record(run_dir, lambda r: _start_attempt(r, attempt))
        recorder = SignalRecorder(run_dir)
        recorder.install()
        log = open(run_dir / TRAIN_LOG, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the job
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        print(attempt_banner(record["run_id"], attempt["attempt"], attempt["node"]), flush=True)
        status, error = JobStatus.FAILED, None
        config = record["config"]
        monitor = start_monitor(run_dir, record)
        recorder.on_terminate = monitor.halt
        local = os.environ.get("SUBMITIT_EXECUTOR") == "local"
        try:
            with recorder.armed():
                if not may_train(config, attempt["attempt"]):
                    raise RuntimeError(f"attempt {attempt['attempt']} exceeds slurm.max_requeues+1="
                                       f"{attempt_limit(config)}; not training")
                env = self.workload.environment()
                rec.update_record(run_dir, lambda r: r.update(environment=env))
                self.workload.train(run_dir, config, attempt["attempt"])
            status = JobStatus.COMPLETED
        except BaseException as e:
            if self.requeuing:  # submitit checkpointed us and asked Slurm to requeue: not a failure
                status = JobStatus.REQUEUING
            elif isinstance(e, Terminated):
                # Not a failure of the job's own: the status stays RUNNING and the epilog decides
                # the end state (cancel, time limit, requeue, pre-emption) from the signal recorded.
                status = None
            else:
                error = f"{type(e).__name__}: {e}"[:500]
            raise
        finally:
            # Ending on SIGTERM: Slurm signalled every process of the step, an s5cmd in flight
            # included, and the epilog copies the folder; waiting on the side thread only delays it.
            monitor.stop(timeout=1.0 if recorder.terminating and not local else 10.0)
            if monitor.syncing and local:
                # No epilog runs after a local job: one last sync is its archive.
                monitor.sync(len(rec.read_results_rows(run_dir / RESULTS_CSV)))
            if status == JobStatus.COMPLETED:
                (run_dir / WEIGHTS / GOOD_CHECKPOINT).unlink(missing_ok=True)
            metrics = rec.read_metrics(run_dir / RESULTS_CSV, rec.fitness_candidates(record, with_task=True))

            def finish(r: dict[str, Any]) -> None:
                a = _current_attempt(r)
                a.update(end=rec.utc_now(), duration_s=round(time.time() - started, 1))
                a["epoch"] = metrics["epochs_done"] if metrics else a.get("epoch")
                if error:
                    a["error"] = error
                if status is not None:
                    a["status"] = r["status"] = status
                if metrics:
                    r["metrics"] = metrics

            try:
                rec.update_record(run_dir, finish)
            except Exception as e:
                print(f"[slurm-yolo] could not record the end of the attempt: {e}", file=sys.stderr, flush=True)
            if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
                if recorder.terminating and status is None:
                    exit_now(128 + signal.SIGTERM)
                in_flight = sys.exc_info()[1]
                # Ended as the job (training done, or its own error): submitit still writes the
                # result or the error after we return, then the interpreter would shut down.
                # Not after a SystemExit or KeyboardInterrupt, whose exit codes must stay theirs.
                if (status == JobStatus.COMPLETED and in_flight is None) or isinstance(in_flight, Exception):
                    atexit.register(exit_at_interpreter_exit)
        return {"run_dir": str(run_dir), "status": status, "metrics": metrics}

    def _follow(self, run_dir: Path) -> dict[str, Any]:
        """srun task > 0 of a multi-node job: start this node's share of the workload, nothing else.

        ``run.json`` (attempts, signals, end status) is kept by task 0 alone, and the workers'
        global rank 0 writes the run folder; this task only reads the config.
        """
        config = rec.read_record(run_dir)["config"]
        if not may_train(config, attempt_number()):  # task 0 refuses too: starting torchrun would only wait for it
            raise RuntimeError(f"attempt {attempt_number()} exceeds slurm.max_requeues+1={attempt_limit(config)}; "
                               "not training")
        node_rank = self.workload.follow(run_dir, config)
        return {"run_dir": str(run_dir), "status": JobStatus.COMPLETED, "node_rank": node_rank}

    def checkpoint(self, run_dir: str):
        """Called by submitit on the time-limit/pre-emption signal (USR2): requeue this run.

        Ultralytics saves ``weights/last.pt`` every epoch, so there is nothing to save here;
        the next attempt resumes from it. Returns ``None`` (no requeue) once the attempt is the
        last that ``slurm.max_requeues`` allows (an unreadable record: the config's default).
        """
        import submitit

        try:
            config = rec.read_record(run_dir)["config"]
        except (OSError, ValueError, KeyError):
            config = {}
        if not may_requeue(config, attempt_number()):
            return None
        self.requeuing = True
        return submitit.helpers.DelayedSubmission(TrainJob(self.workload), run_dir)


def train_multinode(run_dir: Path, config: dict[str, Any], env: Mapping[str, str] | None = None,
                    on_launch: Callable[[NodeLaunch], None] | None = None) -> NodeLaunch:
    """Run this node's share of a multi-node run: torchrun with one worker per GPU (1 on CPU).

    Every srun task calls it (one per node); the workers decide, train and write the run
    folder (see :mod:`slurm_yolo.job.distributed`). ``on_launch`` sees the launch before
    torchrun starts (task 0 records it in run.json). Returns the launch it made.

    Raises:
        SlurmYoloError: not inside a Slurm step, or torchrun failed on this node.
    """
    import torch

    env = os.environ if env is None else env
    requested = int(config["slurm"].get("gpus") or 0)
    gpus = min(requested, torch.cuda.device_count()) if requested and torch.cuda.is_available() else 0
    launch = node_launch(env, gpus)
    argv = torchrun_argv(sys.executable, launch, str(run_dir))
    print(f"[slurm-yolo] node {launch.node_rank}/{launch.nnodes} on {socket.gethostname()}: "
          f"{launch.nproc_per_node} worker(s), world size {launch.world_size}, {launch.backend}, "
          f"rendezvous {launch.rdzv_endpoint}", flush=True)
    if on_launch:
        on_launch(launch)
    code = run_foreground(argv, "train", env=torchrun_env(env, launch),
                          block_signals=(getattr(signal, PREEMPT_SIGNAL),))
    if code != 0:
        raise SlurmYoloError(f"torchrun on node {launch.node_rank} ({socket.gethostname()}) exited with {code}; "
                             f"see {run_dir / SLURM_LOGS} for every node's log")
    return launch


def exit_now(code: int) -> None:
    """End this process at once, without the interpreter's own shutdown.

    After a training, CPython's finalization (module teardown, collecting torch's and
    Ultralytics' object graphs, thread pools) took 12-33 s of a loaded 2-core node here
    (docs/benchmarks.md): past Slurm's ``KillWait``, so the job waited for SIGKILL anyway, and the
    epilog with it. Everything the run needs is on disk by now (run.json, the last checkpoint,
    train.log); only the streams are flushed. The kernel returns the memory.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed stream: nothing left to lose
            pass
    logging.shutdown()
    os._exit(code)


def exit_at_interpreter_exit() -> None:
    """An ``atexit`` handler: :func:`exit_now` with the code the interpreter would have exited
    with, 1 after an uncaught exception (Python sets ``sys.last_value`` when it prints one), else 0.
    Registered last, it runs first: the handlers registered before it (logging's aside, which
    :func:`exit_now` calls) are skipped along with the shutdown."""
    exit_now(1 if getattr(sys, "last_value", None) is not None else 0)


def start_monitor(run_dir: Path, record: dict[str, Any]) -> RunMonitor:
    """Start the side thread (good checkpoints + in-training sync) for this run."""
    archive = record["config"].get("archive") or {}
    every_s = duration_seconds(archive["sync_every"], "archive.sync_every") if archive.get("sync_every") else None
    monitor = RunMonitor(run_dir, record.get("archive_url"), Store.from_env(endpoint_url=archive.get("endpoint_url")),
                         every_s, archive.get("sync_every_epochs"))
    monitor.start()
    return monitor


def _slurm_job_id() -> str | None:
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")
