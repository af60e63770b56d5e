"""Submit runs and sweeps: one planning step, then folders, then submitit.

Every submission, real or ``--dry-run``, single run or sweep, from the CLI or from Python,
goes through :func:`plan`: it runs every check, draws the run IDs and computes the folders,
the archive URLs, the sbatch parameters and the exact batch script, creating nothing. A dry
run shows the plan once :func:`ask_slurm` has put its script to ``sbatch --test-only`` (what
only Slurm can judge: partitions, resources, options); a real submission hands it to
:func:`execute`, which creates the folders (``run.json`` + ``.placement.json``), submits
(one sbatch, an array for a sweep) and records the job IDs. So a preview cannot disagree
with the real command: they share every check, and a rejected plan has created nothing. If
submission fails, :func:`execute` removes what it created (one rollback for runs and
sweeps) and raises :class:`~slurm_yolo.errors.SubmitError`.

Never imports torch or ultralytics (the job module imports them lazily, on the node), and
imports submitit only to render or submit a batch script.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import io
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from slurm_yolo import record as rec
from slurm_yolo.archive.layout import RunLocation, is_under, user_prefix
from slurm_yolo.archive.manifest import hash_fd
from slurm_yolo.commands import run_command
from slurm_yolo.config import Config, load_config
from slurm_yolo.errors import CommandError, ConfigError, SiteConfigError, SubmitError
from slurm_yolo.launcher.slurm_params import (
    SELF_ARCHIVE_WAIT, batch_script, local_command, make_marker, sbatch_reason, sbatch_refusal, self_archive_setup,
    slurm_parameters,
)
from slurm_yolo.mode import Mode, detect, remember_runs_root, user_index_url
from slurm_yolo.names import new_run_id, new_sweep_id, validate_name
from slurm_yolo.provenance import code_version, dataset_identity
from slurm_yolo.runfolder import ARRAY_JSON, SLURM_LOGS, SWEEPS_DIR
from slurm_yolo.site import read_site_config, site_config_path
from slurm_yolo.states import Executor, JobStatus
from slurm_yolo.store import Store
from slurm_yolo.tasks import installed_tasks

EXECUTORS = tuple(e.value for e in Executor)


@dataclass(frozen=True)
class RunHandle:
    """What a submission returns: enough to find the run again.

    Attributes:
        run_id: the run ID.
        job_id: Slurm job ID (``123`` or ``123_4`` for an array element; a PID for ``local``).
        run_dir: the run folder on the shared filesystem.
        archive_url: where the epilog archives the run.
        executor: ``slurm`` or ``local``.
        sweep_id: the sweep this run belongs to, if any.
        array_index: its index in the sweep's job array, if any.
    """

    run_id: str
    job_id: str
    run_dir: str
    archive_url: str
    executor: str = "slurm"
    sweep_id: str | None = None
    array_index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PlannedRun:
    """One run of a :class:`SubmitPlan`.

    Attributes:
        config: its validated config.
        run_id: its run ID (given, or drawn by the plan).
        run_dir: the run folder the plan will create.
        archive_url: where the epilog archives it.
        record: the ``run.json`` it starts with (code version and dataset identity included,
            so that what could fail there fails in the plan, not after a folder was made).
        array_index: its index in the sweep's job array (``None`` for a single run).
        element: the sweep element it came from (a grid combination or an override list).
    """

    config: Config
    run_id: str
    run_dir: Path
    archive_url: str
    record: Mapping[str, Any]
    array_index: int | None = None
    element: Any = None


@dataclass(frozen=True)
class SubmitPlan:
    """Everything a submission will do, computed and checked, nothing created yet.

    Attributes:
        executor: ``slurm`` or ``local``.
        user: whose run it is (``{user}`` in the archive URL).
        runs: the runs, in array-index order (one for a single run).
        params: the submitit/sbatch parameters.
        script: the exact batch script sbatch gets (for ``local``: the command that runs).
        sweep_id: the sweep's ID (``None`` for a single run).
        sweep_dir: the sweep's folder (``None`` for a single run).
        given_run_id: the caller's own run ID, if any (an existing folder is then an error;
            a drawn ID that turns out taken is drawn again).
        reproduces: the run ID this run reproduces, recorded in ``run.json``.
        mode: whether a slurm-yolo epilog archives the runs, or (user mode) the job itself
            does: then the script has the self-archive lines (``None``: not asked, e.g. local).
    """

    executor: str
    user: str
    runs: tuple[PlannedRun, ...]
    params: Mapping[str, Any]
    script: str
    sweep_id: str | None = None
    sweep_dir: Path | None = None
    given_run_id: str | None = None
    reproduces: str | None = None
    mode: Mode | None = None

    @property
    def folder(self) -> Path:
        """The folder the epilog marker names: the sweep folder, else the run folder."""
        return self.sweep_dir if self.sweep_dir is not None else self.runs[0].run_dir

    def to_dict(self) -> dict[str, Any]:
        """The dry run's JSON: the handles the real command would return (no job IDs) + the script."""
        runs = [RunHandle(r.run_id, None, str(r.run_dir), r.archive_url, self.executor,  # type: ignore[arg-type]
                          self.sweep_id, r.array_index).to_dict() for r in self.runs]
        common = {"dry_run": True, "executor": self.executor, "script": self.script}
        if self.sweep_id is None:
            return {**runs[0], **common}
        return {"sweep_id": self.sweep_id, "sweep_dir": str(self.sweep_dir), "runs": runs,
                "elements": [r.element for r in self.runs], **common}

    def describe(self) -> str:
        """One line for people: what the real command would create."""
        if self.sweep_id is None:
            return f"would create {self.runs[0].run_dir}"
        return f"{len(self.runs)} runs in one array under {self.sweep_dir}"


def archive_url_for(config: Config, run_id: str, user: str) -> str:
    """``<archive.url with {user}>/<task>/<project>/<model_name>/<run_id>/``."""
    return RunLocation.of(user_prefix(config.archive["url"], user), config.run, run_id).url


def new_record(
    config: Config, run_id: str, run_dir: Path, *, sweep_id: str | None = None,
    array_index: int | None = None, reproduces: str | None = None, user: str | None = None,
) -> dict[str, Any]:
    """The initial ``run.json`` for a run about to be submitted."""
    user = user or getpass.getuser()
    source_dir = Path(config.code_dir) if config.code_dir else \
        Path(config.source).resolve().parent if config.source and Path(config.source).is_file() else Path.cwd()
    return {
        "schema": rec.SCHEMA_VERSION,
        "run_id": run_id,
        "sweep_id": sweep_id,
        "array_index": array_index,
        "reproduces": reproduces,
        "task": config.run["task"],
        "fitness_metric": installed_tasks().selection_column(config.run["task"]),
        "project": config.run["project"],
        "model_name": config.run["model_name"],
        "user": user,
        "uid": os.getuid(),
        "host": socket.gethostname(),
        "submitted_at": rec.utc_now(),
        "config_file": config.source,
        "config": config.to_dict(),
        "code": code_version(source_dir),
        "model": model_identity(config.train["model"]),
        "dataset": dataset_identity(config.train["data"], config.run.get("dataset_version"), task=config.run["task"]),
        "archive_url": archive_url_for(config, run_id, user),
        "slurm": {"job_id": None, "array_job_id": None, "array_task_id": array_index},
        "environment": None,
        "attempts": [],
        "status": JobStatus.SUBMITTED,
        "end_state": None,
        "metrics": None,
    }


def model_identity(model: str) -> dict[str, Any]:
    """What the run trains from, for lineage: ``{name, path, sha256, size}``.

    A local file (a ``.pt`` to fine-tune, or the user's own model yaml) is hashed once, here
    at submit: the file may change or vanish before the job starts, and the record must say
    which bytes the user asked for. A model yaml Ultralytics ships is named only (``path``
    and the hash ``None``): its bytes are the installed Ultralytics version's.

    Raises:
        ConfigError: the local file could not be read (names it and the fix).
    """
    path = Path(model)
    if not path.is_absolute():  # the config made every local file absolute; the rest are shipped names
        return {"name": model, "path": None, "sha256": None, "size": None}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"train.model={model}: cannot read it ({e.strerror}); fix the path or its permissions") from e
    try:
        digest = hash_fd(fd)
    finally:
        os.close(fd)
    return {"name": path.name, "path": str(path), "sha256": digest["sha256"], "size": digest["size"]}


# ---------------------------------------------------------------------------------------
# The checks. Each raises ConfigError naming the input and the fix; plan() runs all of them.


def check_executor(executor: str) -> str:
    """Refuse an executor name that is neither ``slurm`` nor ``local``."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    return executor


def check_destination(config: Config, user: str, site_path: str | None = None) -> None:
    """Refuse an ``archive.url`` outside the site's allowed prefix, before anything is created.

    The epilog enforces the prefix anyway (it archives under the allowed prefix instead);
    checking here turns a surprise into a clear error. Skipped when the site config is not
    readable from this machine (e.g. a laptop).
    """
    path = site_path or site_config_path()
    if not os.access(path, os.R_OK):
        return
    try:
        site = read_site_config(path)
    except SiteConfigError:
        return  # the admin's problem; the epilog logs it
    url = user_prefix(config.archive["url"], user)
    prefix = user_prefix(site.allowed_prefix, user)
    if not is_under(url, prefix):
        raise ConfigError(f"archive.url={config.archive['url']!r} is outside this site's allowed prefix {prefix} "
                          f"(from {path}); set archive.url under it, e.g. {site.allowed_prefix}yolo")


def check_executor_fits(config: Config, executor: str) -> None:
    """Refuse, before anything is created, what the executor cannot run: several nodes need Slurm."""
    if executor == Executor.LOCAL and config.slurm["nodes"] > 1:
        raise ConfigError(f"slurm.nodes={config.slurm['nodes']} needs Slurm: drop --executor local, or set "
                          "slurm.nodes=1 to train on this machine")


def check_sync_credentials(config: Config, env: Mapping[str, str] | None = None) -> None:
    """In-training sync runs as the user with the user's own S3 credentials: refuse a run that
    would sync without any, up front (the epilog's final archive uses the site's and needs none)."""

    archive = config.archive
    if archive.get("sync_every") is None and archive.get("sync_every_epochs") is None:
        return
    store = Store.from_env(env, endpoint_url=archive.get("endpoint_url"))
    if not (store.keys or store.credentials_file or store.profile):
        raise ConfigError("in-training sync needs your S3 credentials: set AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials / AWS_PROFILE), or turn it off with "
                          "--set archive.sync_every=null (the epilog still archives the run)")


def check_user_mode(config: Config, env: Mapping[str, str] | None = None) -> None:
    """User mode (no slurm-yolo epilog): the job archives and indexes the run with the user's
    own S3 credentials, so refuse up front a run that could do neither."""
    store = Store.from_env(env, endpoint_url=config.archive.get("endpoint_url"))
    if not (store.keys or store.credentials_file or store.profile):
        raise ConfigError("this cluster has no slurm-yolo epilog, so the job archives the run with YOUR S3 "
                          "credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials / "
                          "AWS_PROFILE); see README 'On a cluster without the epilog'")
    if not user_index_url(env):
        raise ConfigError("this cluster has no slurm-yolo epilog, so the job indexes the run itself: set "
                          "SLURM_YOLO_INDEX=s3://BUCKET/index/ (or ask your admin for a site config with index_url)")


def check_one_shape(configs: Sequence[Config]) -> None:
    """A sweep is one job array, and one array has one shape: every element's ``slurm.*`` alike."""
    if any(c.slurm != configs[0].slurm for c in configs):
        raise ConfigError("sweep: slurm.* must be the same for every element (one job array has one shape)")


def _cannot_create(path: Path, strerror: str, what: str = "") -> ConfigError:
    return ConfigError(f"cannot create {what + ' folder ' if what else ''}{path}: {strerror}; check runs_root")


def check_creatable(parent: Path) -> None:
    """Refuse a ``runs_root`` (or sweeps folder) that ``mkdir -p`` would fail on, with its message."""
    for ancestor in (parent, *parent.parents):
        if not ancestor.exists():
            continue
        if not ancestor.is_dir():
            code = errno.EEXIST if ancestor == parent else errno.ENOTDIR
            raise _cannot_create(parent, os.strerror(code))
        if ancestor != parent and not os.access(ancestor, os.W_OK | os.X_OK):
            raise _cannot_create(parent, os.strerror(errno.EACCES))
        return


def _taken(path: Path, what: str = "run") -> ConfigError:
    return ConfigError(f"{what} folder {path} already exists; choose another --run-id")


# ---------------------------------------------------------------------------------------
# Planning.


def plan(
    configs: Config | Sequence[Config], executor: str = "slurm", run_id: str | None = None, *,
    sweep: bool = False, elements: Sequence[Any] | None = None, reproduces: str | None = None,
    user: str | None = None, env: Mapping[str, str] | None = None, slurm_mode: Mode | None = None,
) -> SubmitPlan:
    """Check a submission and compute everything it will do, creating nothing.

    Args:
        configs: the run's config, or one config per sweep element.
        executor: ``slurm`` or ``local``.
        run_id: the caller's own run ID (single runs only); default: drawn here.
        sweep: one job array with a sweep folder (also for a single element).
        elements: what each sweep element was made from (shown by the dry run).
        reproduces: the run ID this run reproduces.
        user: whose run (default: this login).
        env: the environment the credentials check reads (default: ``os.environ``).
        slurm_mode: whether a slurm-yolo epilog archives the runs (default: Slurm is asked,
            :func:`slurm_yolo.mode.detect`; where it cannot be, the script is as with an epilog).

    Raises:
        ConfigError: anything the real submission would refuse before calling Slurm.
    """
    configs = [configs] if isinstance(configs, Config) else list(configs)
    check_executor(executor)
    if not configs:
        raise ConfigError("sweep: no runs to submit")
    if sweep and run_id:
        raise ConfigError("sweep: --run-id names one run; a sweep draws one ID per element")
    if not sweep and len(configs) != 1:
        raise ConfigError("submit: one config per run; submit several as a sweep")
    if run_id:
        validate_name(run_id, "--run-id")
    user = user or getpass.getuser()
    if sweep:
        check_one_shape(configs)
    for c in configs:
        check_executor_fits(c, executor)
        if executor == Executor.SLURM:
            check_destination(c, user)
        check_sync_credentials(c, env)
    found = (slurm_mode or detect(env)) if executor == Executor.SLURM else None
    if found is not None and found.user_mode:
        for c in configs:
            check_user_mode(c, env)
    parent = configs[0].runs_root / SWEEPS_DIR if sweep else configs[0].runs_root
    check_creatable(parent)
    if sweep:
        for root in {c.runs_root for c in configs[1:]} - {configs[0].runs_root}:
            check_creatable(root)
    if run_id and (configs[0].runs_root / run_id).exists():
        raise _taken(configs[0].runs_root / run_id)
    elements = list(elements) if elements is not None else [None] * len(configs)
    if len(elements) != len(configs):
        raise ConfigError("sweep: one element per config")
    p = _draw(configs, elements, executor=executor, user=user, run_id=run_id, sweep=sweep, reproduces=reproduces,
              mode=found)
    for path, what in _folders(p):
        if path.parent.is_dir() and not os.access(path.parent, os.W_OK | os.X_OK):
            raise _cannot_create(path, os.strerror(errno.EACCES), what)
    return p


def _folders(p: SubmitPlan) -> list[tuple[Path, str]]:
    """The folders a plan creates, in creation order, each with what it is."""
    sweep = [(p.sweep_dir, "sweep")] if p.sweep_dir is not None else []
    return sweep + [(r.run_dir, "run") for r in p.runs]


def _fresh(parent: Path, draw: Callable[[], str], what: str) -> str:
    """A drawn name whose folder does not exist yet (the exclusive mkdir referees later)."""
    for _ in range(FRESH_ID_TRIES):
        name = validate_name(draw(), f"{what} ID")
        if not (parent / name).exists():
            return name
    raise SubmitError(f"no fresh {what} ID in {parent} after {FRESH_ID_TRIES} draws; check runs_root")


def _draw(configs: list[Config], elements: list[Any], *, executor: str, user: str, run_id: str | None,
          sweep: bool, reproduces: str | None, mode: Mode | None = None) -> SubmitPlan:
    """The plan's names and script: run IDs (given or drawn), folders, marker, parameters."""
    sweep_id = sweep_dir = None
    if sweep:
        sweeps = configs[0].runs_root / SWEEPS_DIR
        sweep_id = _fresh(sweeps, new_sweep_id, "sweep")
        sweep_dir = sweeps / sweep_id
    runs = []
    for i, (c, element) in enumerate(zip(configs, elements)):
        rid = run_id or _fresh(c.runs_root, new_run_id, "run")
        index = i if sweep else None
        record = new_record(c, rid, c.runs_root / rid, sweep_id=sweep_id, array_index=index, reproduces=reproduces,
                            user=user)
        runs.append(PlannedRun(c, rid, c.runs_root / rid, record["archive_url"], record, index, element))
    folder = sweep_dir if sweep_dir is not None else runs[0].run_dir
    params = slurm_parameters(configs[0], job_name=f"yolo-{sweep_id or runs[0].run_id}",
                              marker=make_marker(str(folder)))
    self_archive = mode is not None and mode.user_mode and executor == Executor.SLURM
    if self_archive:
        params = {**params, **self_archive_setup(_python(), str(folder))}
    logs = str(folder / SLURM_LOGS)
    if executor == Executor.LOCAL:
        script = local_command(_python(), logs)
    else:
        # submitit submits a single job, not a one-element array: render what it will send.
        script = batch_script(params, python=_python(), folder=logs,
                              array_size=len(runs) if len(runs) > 1 else None, self_archive=self_archive)
    return SubmitPlan(executor, user, tuple(runs), params, script, sweep_id, sweep_dir, run_id, reproduces, mode)


def _redrawn(p: SubmitPlan) -> SubmitPlan:
    """The same plan with fresh drawn IDs (one was taken between planning and creating)."""
    return _draw([r.config for r in p.runs], [r.element for r in p.runs], executor=p.executor, user=p.user,
                 run_id=p.given_run_id, sweep=p.sweep_id is not None, reproduces=p.reproduces, mode=p.mode)


# ---------------------------------------------------------------------------------------
# Creating folders.

# Draws of a fresh generated ID before giving up. One retry is already a ~1e-12 event with
# 8-character suffixes; more than one means runs_root is not what we think it is.
FRESH_ID_TRIES = 5


class _Taken(Exception):
    """A drawn name's folder appeared between planning and creating: draw again."""


def _make_dir(parent: Path, name: str, what: str, given: bool) -> Path:
    """``mkdir parent/name``, exclusive: the referee between concurrent submits on a shared filesystem."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_create(parent, e.strerror or str(e)) from e
    path = parent / name
    try:
        path.mkdir()
    except FileExistsError:
        if given:
            raise _taken(path, what) from None
        raise _Taken(str(path)) from None
    except OSError as e:
        raise _cannot_create(path, e.strerror or str(e), what) from e
    return path


def make_fresh_dir(parent: Path, name: str | None, draw: Callable[[], str], what: str = "run") -> Path:
    """Create ``parent/<name>`` (or ``parent/<draw()>``) with an exclusive ``mkdir``; return it.

    ``mkdir`` is atomic on a shared filesystem, so it is the referee between concurrent
    submits: a generated name that already exists is drawn again, a given one is an error.
    """
    for _ in range(1 if name else FRESH_ID_TRIES):
        try:
            return _make_dir(parent, validate_name(name or draw(), f"{what} ID"), what, given=bool(name))
        except _Taken:
            continue
    raise SubmitError(f"no fresh {what} ID in {parent} after {FRESH_ID_TRIES} draws; check runs_root")


def _write_run(run_dir: Path, record: dict[str, Any]) -> None:
    rec.write_record(run_dir, record)
    # Kept apart from run.json, which the job rewrites: a damaged record does not move the run.
    rec.write_placement(run_dir, record)


def prepare_run(config: Config, run_id: str | None = None, **record_fields: Any) -> Path:
    """Create the run folder, its ``run.json`` and ``.placement.json``; return the folder.

    Args:
        config: the run's validated config.
        run_id: a given run ID (must not exist yet); ``None`` draws a new one.
        record_fields: extra :func:`new_record` fields (sweep ID, array index, ...).
    """
    run_dir = make_fresh_dir(config.runs_root, run_id, new_run_id)
    _write_run(run_dir, new_record(config, run_dir.name, run_dir, **record_fields))
    return run_dir


def _create(p: SubmitPlan, created: list[Path]) -> None:
    """The plan's folders, in order (sweep folder first), each appended to ``created`` once made."""
    for path, what in _folders(p):
        created.append(_make_dir(path.parent, path.name, what, given=what == "run" and p.given_run_id is not None))
    for r in p.runs:
        _write_run(r.run_dir, dict(r.record))
    if p.sweep_dir is not None:
        rec.write_json_atomic(p.sweep_dir / ARRAY_JSON, {
            "sweep_id": p.sweep_id, "runs": {str(r.array_index): str(r.run_dir) for r in p.runs},
        })


def _roll_back(created: Iterable[Path]) -> None:
    """Remove what a failed submission created, so that nothing is left half-submitted."""
    for path in created:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Submitting.


def _python() -> str:
    # The job runs the same interpreter (the site's slurm-yolo venv, on a shared path).
    return sys.executable


def make_executor(kind: str, folder: Path, config: Config, params: Mapping[str, Any], *,
                  self_archive: bool = False):
    """A submitit executor of ``kind`` writing its logs and pickles to ``folder``; with
    ``self_archive`` (user mode), one whose srun line is :data:`SELF_ARCHIVE_WAIT`'s."""
    import submitit  # imported here: a few hundred ms, only paid when submitting

    class SelfArchiving(submitit.SlurmExecutor):  # type: ignore[misc]
        @property
        def _submitit_command_str(self) -> str:
            return str(super()._submitit_command_str) + SELF_ARCHIVE_WAIT

    if kind == Executor.SLURM:
        try:
            executor = (SelfArchiving if self_archive else submitit.SlurmExecutor)(
                folder=folder, max_num_timeout=config.slurm["max_requeues"], python=_python())
        except RuntimeError as e:  # submitit: no srun on PATH
            raise SubmitError(f"Slurm is not available here ({e}); use --executor local or run on a login node") from e
        executor.update_parameters(**params)
        return executor
    if kind == Executor.LOCAL:
        local = submitit.LocalExecutor(folder=folder, max_num_timeout=config.slurm["max_requeues"])
        local.update_parameters(timeout_min=params["time"], gpus_per_node=params.get("gpus_per_node", 0),
                                cpus_per_task=params["cpus_per_task"], signal_delay_s=params["signal_delay_s"])
        return local
    raise ConfigError(f"--executor {kind!r}: choose one of {', '.join(EXECUTORS)}")


def _submit_jobs(p: SubmitPlan, job: Callable[[str], Any]) -> list[Any]:
    """Submit the plan's runs (one array for a sweep) with submitit; its jobs, in run order."""
    ex = make_executor(p.executor, p.folder / SLURM_LOGS, p.runs[0].config, p.params,
                       self_archive=p.mode is not None and p.mode.user_mode)
    # submitit prints a refused sbatch's stderr itself before raising it: held back here so
    # that the user reads Slurm's reason once, in our error line.
    held = io.StringIO()
    with contextlib.redirect_stderr(held):
        if p.sweep_id is None:
            jobs = [ex.submit(job, str(p.runs[0].run_dir))]
        else:
            with ex.batch():
                jobs = [ex.submit(job, str(r.run_dir)) for r in p.runs]
    sys.stderr.write(held.getvalue())  # a successful submission's warnings, if any
    return jobs


def submission_error(e: BaseException, what: str) -> SubmitError:
    """The one-line error for a failed submission of ``what`` (a run or sweep ID)."""
    cause = e.__cause__ if isinstance(e.__cause__, subprocess.CalledProcessError) else e
    if isinstance(cause, subprocess.CalledProcessError) and Path(str(cause.cmd[0])).name == "sbatch":
        stderr = cause.stderr.decode(errors="replace") if isinstance(cause.stderr, bytes) else cause.stderr or ""
        return sbatch_refusal(stderr, cause.returncode)
    if isinstance(e, FileNotFoundError) and Path(str(e.filename or "")).name == "sbatch":
        return SubmitError("sbatch is not installed or not on PATH; use --executor local or run on a login node; "
                           "nothing was submitted")
    return SubmitError(f"submission of {what} failed: {_one_line(e)}; nothing was submitted")


def execute(p: SubmitPlan, job: Callable[[str], Any]) -> list[RunHandle]:
    """Carry out a plan: create its folders, submit, record the job IDs.

    Args:
        p: a plan from :func:`plan`.
        job: what runs on the node for each run, called with the run folder.

    Returns:
        One :class:`RunHandle` per run, in array-index order.

    Raises:
        ConfigError: a given run ID's folder appeared since planning, or a folder cannot be made.
        SubmitError: Slurm refused the job or could not be reached; everything created is removed.
    """
    created: list[Path] = []
    try:
        for _ in range(FRESH_ID_TRIES):
            try:
                _create(p, created)
                break
            except _Taken:
                _roll_back(created)
                created.clear()
                p = _redrawn(p)
        else:
            raise SubmitError(f"no fresh run ID in {p.runs[0].config.runs_root} after {FRESH_ID_TRIES} draws; "
                              "check runs_root")
        jobs = _submit_jobs(p, job)
    except BaseException as e:
        _roll_back(created)
        if isinstance(e, (SubmitError, ConfigError, KeyboardInterrupt)):
            raise
        raise submission_error(e, p.sweep_id or p.runs[0].run_id) from e
    if p.mode is not None and p.mode.user_mode:  # what the user's reconciler walks without accounting
        for root in dict.fromkeys(str(r.config.runs_root) for r in p.runs):
            remember_runs_root(root)
    handles = []
    for r, j in zip(p.runs, jobs):
        job_id = str(j.job_id)
        ids = {"job_id": job_id, "executor": p.executor}
        if p.sweep_id is not None:
            ids["array_job_id"] = job_id.split("_")[0]
        rec.update_record(r.run_dir, _set_slurm_ids(ids))
        handles.append(RunHandle(r.run_id, job_id, str(r.run_dir), r.archive_url, p.executor, p.sweep_id,
                                 r.array_index))
    return handles


def _set_slurm_ids(ids: Mapping[str, str]) -> Callable[[dict[str, Any]], None]:
    def change(record: dict[str, Any]) -> None:
        record["slurm"].update(ids)
    return change


def submit(
    config: Config, *, job: Callable[[str], Any], run_id: str | None = None, executor: str = "slurm",
    reproduces: str | None = None,
) -> RunHandle:
    """Create a run folder and submit one training job.

    Args:
        config: a validated config (:func:`~slurm_yolo.config.load_config`).
        job: what runs on the node, called with the run folder (``slurm_yolo.job.train.TrainJob()``;
            the caller passes it, so the launcher never depends on the job's code).
        run_id: bring your own run ID (validated); default: a new time-sortable one.
        executor: ``slurm`` (sbatch through submitit) or ``local`` (no Slurm, this machine).
        reproduces: the run ID this run reproduces, recorded in ``run.json``.

    Raises:
        ConfigError: any check of :func:`plan` failed; nothing was created.
        SubmitError: Slurm refused the job; the run folder has been removed again.
    """
    return execute(plan(config, executor, run_id, reproduces=reproduces), job)[0]


# Where Slurm's clients look for its config when SLURM_CONF is not set (Debian's and Slurm's default).
SLURM_CONF_DEFAULTS = ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf", "/usr/local/etc/slurm.conf")
# sbatch --test-only is one round trip to slurmctld; a controller that takes longer is down.
ASK_SLURM_TIMEOUT_S = 20


def ask_slurm(p: SubmitPlan, env: Mapping[str, str] | None = None) -> str | None:
    """What Slurm says of the plan's batch script without queuing it (``sbatch --test-only``),
    for the dry run: a script sbatch would refuse is refused here, with the same error.

    Returns:
        Slurm's estimate (``Job 75 to start at ... in partition debug``), or ``None`` where
        Slurm cannot be asked from here (``--executor local``, no sbatch on PATH, no Slurm
        config: e.g. a laptop), which the dry run says.

    Raises:
        SubmitRefused: sbatch refused the script (partition, resources, an option).
        SubmitError: Slurm could not be reached.
    """
    env = os.environ if env is None else env
    sbatch = shutil.which("sbatch", path=env.get("PATH", os.defpath))
    conf = env.get("SLURM_CONF") or next((c for c in SLURM_CONF_DEFAULTS if os.path.isfile(c)), None)
    # Without a config file sbatch retries for a minute before it gives up: do not ask it then.
    if p.executor != Executor.SLURM or sbatch is None or conf is None:
        return None
    with tempfile.NamedTemporaryFile("w", prefix="slurm-yolo-dry-run-", suffix=".sh") as script:
        script.write(p.script)
        script.flush()
        try:
            proc = run_command([sbatch, "--test-only", script.name], "dry run", timeout=ASK_SLURM_TIMEOUT_S,
                               env=env, check=False)
        except CommandError as e:
            raise SubmitError(f"sbatch could not reach Slurm: {e.detail}; try again, or ask your admin if it "
                              "persists; nothing was submitted") from e
    if proc.returncode != 0:
        raise sbatch_refusal(proc.stderr, proc.returncode)
    return sbatch_reason(proc.stderr or proc.stdout)


def dry_run(config: Config, *, run_id: str | None = None, executor: str = "slurm") -> dict[str, Any]:
    """What :func:`submit` would do (its plan, as JSON, with Slurm's answer to its script in
    ``slurm_says``), without creating or submitting anything."""
    p = plan(config, executor, run_id)
    return {**p.to_dict(), "slurm_says": ask_slurm(p)}


# ---------------------------------------------------------------------------------------
# Sweeps.


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["train.lr0=0.01,0.001"]`` (the CLI's ``--grid``) → ``{"train.lr0": [0.01, 0.001]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values or not key.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. --grid train.lr0=0.01,0.001")
        try:
            grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
        except yaml.YAMLError as e:
            raise ConfigError(f"--grid {item!r}: a value is not valid YAML") from e
    return grid


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """``{"a": [1, 2], "b": [3]}`` → ``[{"a": 1, "b": 3}, {"a": 2, "b": 3}]`` (cartesian product)."""
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) or not list(values):
            raise ConfigError(f"sweep grid {key}: needs a non-empty list of values")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(list(grid[k]) for k in keys))]


def override_strings(element: Mapping[str, Any] | Sequence[str]) -> list[str]:
    """``{"train.lr0": 0.01}`` → ``["train.lr0=0.01"]`` (values as YAML); lists pass through."""
    if isinstance(element, Mapping):
        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for k, v in element.items()]
    return [str(x) for x in element]


def sweep_configs(
    config: str | os.PathLike, grid: Mapping[str, Sequence[Any]] | None = None, *,
    overrides: Sequence[Mapping[str, Any] | Sequence[str]] | None = None, base_overrides: Sequence[str] = (),
) -> tuple[list[Config], list[Any]]:
    """Load every element of a sweep: ``(configs, elements)``, one each per run, in order.

    Raises:
        ConfigError: neither or both of ``grid`` and ``overrides``, no element, or any
            element's config is invalid.
    """
    if (grid is None) == (overrides is None):
        raise ConfigError("sweep: give exactly one of grid= or overrides=")
    elements = expand_grid(grid) if grid is not None else list(overrides or ())
    if not elements:
        raise ConfigError("sweep: no runs to submit")
    return [load_config(config, list(base_overrides) + override_strings(e)) for e in elements], elements


def plan_sweep(
    config: str | os.PathLike, grid: Mapping[str, Sequence[Any]] | None = None, *,
    overrides: Sequence[Mapping[str, Any] | Sequence[str]] | None = None, base_overrides: Sequence[str] = (),
    executor: str = "slurm", env: Mapping[str, str] | None = None,
) -> SubmitPlan:
    """The plan of a sweep (see :func:`sweep` for the arguments): every element loaded and checked."""
    check_executor(executor)
    configs, elements = sweep_configs(config, grid, overrides=overrides, base_overrides=base_overrides)
    return plan(configs, executor, sweep=True, elements=elements, env=env)


def sweep(
    config: str | os.PathLike,
    grid: Mapping[str, Sequence[Any]] | None = None,
    *,
    overrides: Sequence[Mapping[str, Any] | Sequence[str]] | None = None,
    base_overrides: Sequence[str] = (),
    executor: str = "slurm",
    job: Callable[[str], Any],
) -> list[RunHandle]:
    """Submit a sweep as ONE Slurm job array; each element is its own run with its own ID.

    Args:
        config: the base config file.
        grid: ``{"train.lr0": [0.01, 0.001], ...}`` — one run per combination.
        overrides: alternatively, a list of override sets, one run each
            (``[{"train.lr0": 0.01}, ["train.lr0=0.001", "train.batch=8"]]``).
        base_overrides: ``--set`` strings applied to every element first.
        executor: ``slurm`` or ``local``.
        job: what runs on the node for each element (see :func:`submit`).

    Returns:
        One :class:`RunHandle` per element, in array-index order, all with the same sweep ID.

    Raises:
        ConfigError: any element's config is invalid (checked before anything is created),
            or the elements ask for different Slurm resources (one array has one shape).
        SubmitError: Slurm refused the array; every folder created has been removed again.
    """
    p = plan_sweep(config, grid, overrides=overrides, base_overrides=base_overrides, executor=executor)
    return execute(p, job)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:300] + "…") if len(text) > 300 else text or type(e).__name__
