"""Submit runs and sweeps: run IDs, run folders with ``run.json``, submitit executors.

Order of operations, so that a failure never leaves a half-submitted job:
validate every config → create the run folder(s) + ``run.json`` → submit (one sbatch,
an array for a sweep) → record the job ID. If submission fails, the folders just created
are removed again and :class:`~slurm_yolo.errors.SubmitError` is raised.

Never imports torch or ultralytics (the job module imports them lazily, on the node).
"""

from __future__ import annotations

import getpass
import itertools
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from slurm_yolo import record as rec
from slurm_yolo.archive.layout import RunLocation, is_under, user_prefix
from slurm_yolo.config import Config, load_config
from slurm_yolo.errors import ConfigError, SiteConfigError, SubmitError
from slurm_yolo.provenance import code_version, dataset_identity
from slurm_yolo.launcher.slurm_params import batch_script, make_marker, slurm_parameters
from slurm_yolo.names import new_run_id, new_sweep_id, validate_name
from slurm_yolo.site import read_site_config, site_config_path
from slurm_yolo.states import Executor, JobStatus
from slurm_yolo.store import Store

EXECUTORS = tuple(e.value for e in Executor)
SWEEPS_DIR = "_sweeps"
ARRAY_JSON = "array.json"


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
        "project": config.run["project"],
        "model_name": config.run["model_name"],
        "user": user,
        "uid": os.getuid(),
        "host": socket.gethostname(),
        "submitted_at": rec.utc_now(),
        "config_file": config.source,
        "config": config.to_dict(),
        "code": code_version(source_dir),
        "dataset": dataset_identity(config.train["data"], config.run.get("dataset_version")),
        "archive_url": archive_url_for(config, run_id, user),
        "slurm": {"job_id": None, "array_job_id": None, "array_task_id": array_index},
        "environment": None,
        "attempts": [],
        "status": JobStatus.SUBMITTED,
        "end_state": None,
        "metrics": None,
    }


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


# Draws of a fresh generated ID before giving up. One retry is already a ~1e-12 event with
# 8-character suffixes; more than one means runs_root is not what we think it is.
FRESH_ID_TRIES = 5


def make_fresh_dir(parent: Path, name: str | None, draw: Callable[[], str], what: str = "run") -> Path:
    """Create ``parent/<name>`` (or ``parent/<draw()>``) with an exclusive ``mkdir``; return it.

    ``mkdir`` is atomic on a shared filesystem, so it is the referee between concurrent
    submits: a generated name that already exists is drawn again, a given one is an error.
    """
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {parent}: {e.strerror}; check runs_root") from e
    for _ in range(1 if name else FRESH_ID_TRIES):
        path = parent / validate_name(name or draw(), f"{what} ID")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            if name:
                raise ConfigError(f"{what} folder {path} already exists; choose another --run-id") from None
        except OSError as e:
            raise ConfigError(f"cannot create {what} folder {path}: {e.strerror}; check runs_root") from e
    raise SubmitError(f"no fresh {what} ID in {parent} after {FRESH_ID_TRIES} draws; check runs_root")


def prepare_run(config: Config, run_id: str | None = None, **record_fields: Any) -> Path:
    """Create the run folder and its ``run.json``; return the folder (its name is the run ID).

    Args:
        config: the run's validated config.
        run_id: a given run ID (must not exist yet); ``None`` draws a new one.
        record_fields: extra :func:`new_record` fields (sweep ID, array index, ...).
    """
    run_dir = make_fresh_dir(config.runs_root, run_id, new_run_id)
    rec.write_record(run_dir, new_record(config, run_dir.name, run_dir, **record_fields))
    return run_dir


def _python() -> str:
    # The job runs the same interpreter (the site's slurm-yolo venv, on a shared path).
    return sys.executable


def make_executor(kind: str, folder: Path, config: Config, params: Mapping[str, Any]):
    """A submitit executor of ``kind`` writing its logs and pickles to ``folder``."""
    import submitit  # imported here: a few hundred ms, only paid when submitting

    if kind == Executor.SLURM:
        try:
            executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=config.slurm["max_requeues"],
                                              python=_python())
        except RuntimeError as e:  # submitit: no srun on PATH
            raise SubmitError(f"Slurm is not available here ({e}); use --executor local or run on a login node") from e
        executor.update_parameters(**params)
        return executor
    if kind == Executor.LOCAL:
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=config.slurm["max_requeues"])
        executor.update_parameters(timeout_min=params["time"], gpus_per_node=params.get("gpus_per_node", 0),
                                   cpus_per_task=params["cpus_per_task"], signal_delay_s=params["signal_delay_s"])
        return executor
    raise ConfigError(f"--executor {kind!r}: choose one of {', '.join(EXECUTORS)}")


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
        ConfigError: invalid run ID or run folder already exists.
        SubmitError: Slurm refused the job; the run folder has been removed again.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    check_executor_fits(config, executor)
    if run_id:
        validate_name(run_id, "--run-id")
    if executor == Executor.SLURM:
        check_destination(config, getpass.getuser())
    check_sync_credentials(config)
    run_dir = prepare_run(config, run_id, reproduces=reproduces)
    run_id = run_dir.name
    try:
        params = slurm_parameters(config, job_name=f"yolo-{run_id}", marker=make_marker(str(run_dir)))
        ex = make_executor(executor, run_dir / "slurm", config, params)
        submitted = ex.submit(job, str(run_dir))
    except BaseException as e:
        shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(e, (SubmitError, ConfigError)):
            raise
        if isinstance(e, KeyboardInterrupt):
            raise
        raise SubmitError(f"submission of {run_id} failed: {_one_line(e)}; nothing was submitted") from e
    rec.update_record(run_dir, lambda r: r["slurm"].update(job_id=str(submitted.job_id), executor=executor))
    record = rec.read_record(run_dir)
    return RunHandle(run_id, str(submitted.job_id), str(run_dir), record["archive_url"], executor)


def dry_run(config: Config, *, run_id: str | None = None, array_size: int | None = None) -> dict[str, Any]:
    """What :func:`submit` would do, without creating or submitting anything."""
    run_id = validate_name(run_id, "--run-id") if run_id else new_run_id()
    run_dir = config.runs_root / run_id
    params = slurm_parameters(config, job_name=f"yolo-{run_id}", marker=make_marker(str(run_dir)))
    script = batch_script(params, python=_python(), folder=str(run_dir / "slurm"), array_size=array_size)
    return {"run_id": run_id, "run_dir": str(run_dir), "job_id": None, "dry_run": True,
            "archive_url": archive_url_for(config, run_id, getpass.getuser()), "script": script}


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
        import yaml

        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for k, v in element.items()]
    return [str(x) for x in element]


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
    if (grid is None) == (overrides is None):
        raise ConfigError("sweep: give exactly one of grid= or overrides=")
    elements = expand_grid(grid) if grid is not None else list(overrides)
    if not elements:
        raise ConfigError("sweep: no runs to submit")
    configs = [load_config(config, list(base_overrides) + override_strings(e)) for e in elements]
    if any(c.slurm != configs[0].slurm for c in configs):
        raise ConfigError("sweep: slurm.* must be the same for every element (one job array has one shape)")
    for c in configs:
        check_executor_fits(c, executor)
        if executor == Executor.SLURM:
            check_destination(c, getpass.getuser())
        check_sync_credentials(c)
    created: list[Path] = []
    try:
        sweep_dir = make_fresh_dir(configs[0].runs_root / SWEEPS_DIR, None, new_sweep_id, "sweep")
        sweep_id = sweep_dir.name
        created.append(sweep_dir)
        for i, c in enumerate(configs):
            created.append(prepare_run(c, sweep_id=sweep_id, array_index=i))
        rec.write_json_atomic(sweep_dir / ARRAY_JSON, {
            "sweep_id": sweep_id, "runs": {str(i): str(d) for i, d in enumerate(created[1:])},
        })
        params = slurm_parameters(configs[0], job_name=f"yolo-{sweep_id}", marker=make_marker(str(sweep_dir)))
        ex = make_executor(executor, sweep_dir / "slurm", configs[0], params)
        with ex.batch():
            jobs = [ex.submit(job, str(d)) for d in created[1:]]
    except BaseException as e:
        for d in created:
            shutil.rmtree(d, ignore_errors=True)
        if isinstance(e, (SubmitError, ConfigError, KeyboardInterrupt)):
            raise
        raise SubmitError(f"sweep submission failed: {_one_line(e)}; nothing was submitted") from e
    handles = []
    for i, (job, run_dir) in enumerate(zip(jobs, created[1:])):
        rec.update_record(run_dir, lambda r, j=job: r["slurm"].update(
            job_id=str(j.job_id), array_job_id=str(j.job_id).split("_")[0], executor=executor))
        handles.append(RunHandle(run_dir.name, str(job.job_id), str(run_dir),
                                 rec.read_record(run_dir)["archive_url"], executor, sweep_id, i))
    return handles


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:300] + "…") if len(text) > 300 else text or type(e).__name__
