"""One run at a time: show, compare, fetch (verified), reproduce."""

from __future__ import annotations

import copy

import json
import platform
import tempfile
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from slurm_yolo.archive import layout, s5cmd
from slurm_yolo.archive.manifest import verify_tree
from slurm_yolo.store import split_url
from slurm_yolo.catalog.index import IndexLocation, check_s5cmd, get_object, load_records
from slurm_yolo.errors import ConfigError, IntegrityError, RunNotFound, StoreError
from slurm_yolo.names import validate_name
from slurm_yolo.record import read_results_rows
from slurm_yolo.runfolder import ARGS_YAML, RESULTS_CSV, RUN_JSON
from slurm_yolo.tasks import metric_field
from slurm_yolo.commands import run_command
from slurm_yolo.errors import CommandError
from slurm_yolo.config import resolve_config
from slurm_yolo import provenance

# args.yaml keys that differ between any two runs by construction (run folder names), not by choice.
PER_RUN_ARGS = {"name", "save_dir", "project"}
# Compared for every run; then each metrics.<field> any of the runs has.
METRICS = ("fitness_metric", "fitness", "map50", "map50_95", "precision", "recall", "epochs_done")


def find_run(cat: IndexLocation, run_id: str, client=None) -> dict[str, Any]:
    """The index record of ``run_id``: its ``runs/<run_id>.json`` record, else a search of the index.

    Raises:
        RunNotFound: no such run in the index.
    """
    validate_name(run_id, "run ID")
    client = client or cat.store.boto3_client()
    got = get_object(client, cat.bucket, cat.key(layout.index_key(run_id)))
    if got is not None:
        return json.loads(got[0])
    for rec in load_records(cat, client):  # a run not given a runs/ record (e.g. index rebuilt elsewhere)
        if rec.get("run_id") == run_id:
            return rec
    raise RunNotFound(f"no run {run_id!r} in the index {cat.index_url}; check the ID with `slurm-yolo runs list`, "
                      "or run `slurm-yolo index rebuild`")


def archive_url(record: Mapping[str, Any]) -> str:
    """The archive URL of an index record, checked to be the run's own folder.

    Why checked: ``fetch`` and ``prune`` act on ``<archive_url>*``; a damaged record pointing at
    a bucket root must never turn into "copy/delete everything".
    """
    url, run_id = record.get("archive_url"), record.get("run_id")
    if not (isinstance(url, str) and isinstance(run_id, str) and url.endswith(f"/{validate_name(run_id, 'run ID')}/")):
        raise StoreError(f"index record of {run_id!r} has archive_url {url!r}, not .../{run_id}/; "
                         "run `slurm-yolo index rebuild`")
    split_url(url)
    return url


def read_archived(cat: IndexLocation, record: Mapping[str, Any], name: str, client=None) -> bytes | None:
    """The bytes of file ``name`` of an archived run; ``None`` if it is not there."""
    client = client or cat.store.boto3_client()
    bucket, key = split_url(archive_url(record))
    got = get_object(client, bucket, key + name)
    return got[0] if got else None


def run_record(cat: IndexLocation, run_id: str, client=None) -> dict[str, Any]:
    """The archived ``run.json`` of a run (the full record: config, attempts, environment).

    Raises:
        RunNotFound: not in the index. StoreError: indexed but its run.json is missing.
    """
    client = client or cat.store.boto3_client()
    record = find_run(cat, run_id, client)
    body = read_archived(cat, record, RUN_JSON, client)
    if body is None:
        raise StoreError(f"{record['archive_url']}{RUN_JSON} is missing: the archive of {run_id} is incomplete "
                         "(epilog spool not drained yet?); try again later or ask your admin")
    return json.loads(body)


@dataclass(frozen=True)
class Comparison:
    """``runs compare``: hyper-parameters that differ, metrics, and one metric per epoch.

    Attributes:
        run_ids: the runs, in the order asked.
        hparams: ``{key: [value per run]}`` (only differing keys, or exactly ``keys`` if given).
        metrics: ``{metric: [value per run]}``: :data:`METRICS`, then ``metrics.<field>``.
        curves: ``{run_id: [(epoch, value), ...]}`` of :attr:`metric` from each results.csv.
        metric: the field plotted (the runs' task metric unless one was asked for).
    """

    run_ids: tuple[str, ...]
    hparams: dict[str, list[Any]]
    metrics: dict[str, list[Any]]
    curves: dict[str, list[tuple[int, float]]]
    metric: str = "map50_95"

    def to_dict(self) -> dict[str, Any]:
        return {"runs": list(self.run_ids), "hparams": self.hparams, "metrics": self.metrics, "metric": self.metric,
                "curves": {k: [list(p) for p in v] for k, v in self.curves.items()}}


def differing(args: Sequence[Mapping[str, Any]], keys: Sequence[str] = ()) -> dict[str, list[Any]]:
    """``{key: [value per run]}`` for ``keys``, or for every key whose values are not all equal."""
    if keys:
        return {k: [a.get(k) for a in args] for k in keys}
    names = sorted({k for a in args for k in a} - PER_RUN_ARGS)
    return {k: [a.get(k) for a in args] for k in names if len({json.dumps(a.get(k), default=str) for a in args}) > 1}


def curve_metric(records: Sequence[Mapping[str, Any]]) -> str:
    """The field ``runs compare`` plots: the runs' task metric (the most common fitness column
    among them), else box mAP50-95."""
    columns = [str(r["fitness_metric"]) for r in records if isinstance(r.get("fitness_metric"), str)]
    field = metric_field(max(set(columns), key=columns.count)) if columns else None
    return field or "map50_95"


def compare(cat: IndexLocation, run_ids: Sequence[str], keys: Sequence[str] = (), *,
            metric: str | None = None) -> Comparison:
    """Compare runs from their archived ``args.yaml``, index metrics and ``results.csv``.

    Args:
        metric: the field to follow per epoch (``top1``, ``metrics.map50_95_mask``); default
            :func:`curve_metric`.

    Raises:
        ConfigError: fewer than two runs, or ``metric`` is in none of their results.csv.
    """
    if len(run_ids) < 2:
        raise ConfigError("runs compare needs at least two run IDs")
    client = cat.store.boto3_client()
    records = [find_run(cat, r, client) for r in run_ids]
    field = metric.removeprefix("metrics.") if metric else curve_metric(records)
    args, curves, seen = [], {}, set[str]()
    with tempfile.TemporaryDirectory(prefix="slurm-yolo-compare-") as tmp:
        for record in records:
            raw = read_archived(cat, record, ARGS_YAML, client)
            loaded = yaml.safe_load(raw) if raw else None
            args.append(loaded if isinstance(loaded, dict) else {})
            csv_path = Path(tmp, record["run_id"] + ".csv")
            csv_path.write_bytes(read_archived(cat, record, RESULTS_CSV, client) or b"")
            rows = read_results_rows(csv_path)
            seen.update(k for row in rows for k, v in row.items() if v is not None and k != "epoch")
            curves[record["run_id"]] = [(r["epoch"], r[field]) for r in rows
                                        if r["epoch"] is not None and r.get(field) is not None]
    if metric and seen and field not in seen:
        raise ConfigError(f"--metric {metric!r}: no such column in these runs' results.csv; "
                          f"they have: {', '.join(sorted(seen))}")
    fields = []
    for record in records:
        fields += [f for f in (record.get("metrics") or {}) if f not in fields]
    metrics = {m: [record.get(m) for record in records] for m in METRICS}
    metrics.update({f"metrics.{f}": [(record.get("metrics") or {}).get(f) for record in records] for f in fields})
    return Comparison(tuple(run_ids), differing(args, keys), metrics, curves, field)


def plot_curves(comparison: Comparison, out: str | Path) -> Path:
    """Write a PNG of the compared metric per epoch, one line per run.

    Raises:
        ConfigError: matplotlib is not installed (it comes with ultralytics).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a login node
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ConfigError("--plot needs matplotlib: `pip install matplotlib` (or install slurm-yolo[train])") from e
    fig, ax = plt.subplots(figsize=(8, 5))
    for run_id, points in comparison.curves.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=run_id)
    ax.set_xlabel("epoch")
    ax.set_ylabel(comparison.metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def fetch(cat: IndexLocation, run_id: str, to: str | Path) -> dict[str, Any]:
    """Download a run's bundle into ``to`` with s5cmd and verify every file against ``MANIFEST.json``.

    Returns:
        ``{"run_id", "archive_url", "dir", "files", "bytes"}``.

    Raises:
        StoreError: the download failed. IntegrityError: a file is missing or differs
            (the message names it), or the archive has no manifest.
    """
    record = find_run(cat, run_id)
    url = archive_url(record)
    dest = Path(to)
    dest.mkdir(parents=True, exist_ok=True)
    result = s5cmd.run(s5cmd.base_argv(cat.store) + ["cp", url + "*", f"{dest}/"], cat.store)
    check_s5cmd(result, f"download {url}")
    try:
        manifest = json.loads((dest / layout.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{url}{layout.MANIFEST} is missing or unreadable: the archive of {run_id} is "
                             f"incomplete; nothing in {dest} can be trusted") from e
    problems = verify_tree(dest, manifest)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise IntegrityError(f"{run_id}: {problems[0]}{more} in {dest}; the stored copy differs from its manifest")
    files = manifest.get("files", {})
    return {"run_id": run_id, "archive_url": url, "dir": str(dest), "files": len(files),
            "bytes": sum(f["size"] for f in files.values())}


def current_environment() -> dict[str, str | None]:
    """Python, torch and ultralytics versions here, from package metadata (no torch import)."""
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": version("torch"), "ultralytics": version("ultralytics")}


def archived_code_checkout(code: Mapping[str, Any], runs_root: Path) -> Path | None:
    """The archived commit's code, when its repository is on this machine and has the commit.

    The repository itself when it is at that commit already; else a detached ``git worktree``
    of the commit under ``<runs_root>/_code/<commit>`` (on the shared filesystem, so the
    job's node sees it; reused by later reproductions). ``None`` when it cannot be had: then
    the current code is used and :func:`reproduction_warnings` says so.
    """

    repo, commit = code.get("repo"), code.get("commit")
    if not repo or not commit or not Path(repo).is_dir():
        return None
    git = ["git", "-C", repo]
    try:
        run_command(git + ["cat-file", "-e", f"{commit}^{{commit}}"], "reproduce", timeout=30)
        if run_command(git + ["rev-parse", "HEAD"], "reproduce", timeout=30).stdout.strip() == commit:
            return Path(repo)
        dest = runs_root / "_code" / commit[:12]
        if not (dest / ".git").exists():
            run_command(git + ["worktree", "add", "--detach", str(dest), commit], "reproduce", timeout=300)
        return dest
    except CommandError:
        return None


def rebase_paths(config: Mapping[str, Any], repo: str | None, checkout: Path) -> dict[str, Any]:
    """The config with ``train.model``/``train.data`` paths inside ``repo`` moved into ``checkout``
    (where the checkout has them: datasets are rarely in git)."""
    out = copy.deepcopy(dict(config))
    if not repo or Path(repo) == checkout:
        return out
    for key in ("model", "data"):
        value = out.get("train", {}).get(key)
        if isinstance(value, str) and value.startswith(repo.rstrip("/") + "/"):
            candidate = checkout / Path(value).relative_to(repo)
            if candidate.exists():
                out["train"][key] = str(candidate)
    return out


def reproduction_warnings(record: Mapping[str, Any], env_now: Mapping[str, Any],
                          code_now: Mapping[str, Any] | None) -> list[str]:
    """Differences between the archived run and here that may change the result."""
    out = []
    code = record.get("code") or {}
    if code.get("commit"):
        if code.get("dirty"):
            out.append(f"the archived run had uncommitted changes on {code['commit'][:12]}: they are not reproduced")
        if code_now is None:
            out.append(f"not in a git repository; the archived code was {code['commit'][:12]} in {code.get('repo')}")
        elif code_now.get("commit") != code["commit"]:
            out.append(f"code is at {str(code_now.get('commit'))[:12]}, the archived run used {code['commit'][:12]}: "
                       f"`git checkout {code['commit'][:12]}` for an exact rerun")
    archived_env = record.get("environment") or {}
    for name in ("python", "torch", "ultralytics"):
        then, now = archived_env.get(name), env_now.get(name)
        if then and then != now:
            out.append(f"{name} is {now or 'not installed'} here, the archived run used {then}")
    return out


@dataclass(frozen=True)
class Reproduction:
    """What ``reproduce`` did (or would do, with ``dry_run``).

    Attributes:
        reproduces: the original run ID.
        config: the re-resolved config (the original's, with the overrides).
        warnings: code and environment differences.
        handle: the new run's ``RunHandle.to_dict()``; ``None`` for a dry run.
    """

    reproduces: str
    config: dict[str, Any]
    warnings: tuple[str, ...]
    handle: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reproduces": self.reproduces, "config": self.config, "warnings": list(self.warnings),
                "run": self.handle}


def reproduce(
    cat: IndexLocation, run_id: str, overrides: Sequence[str] = (), *, executor: str = "slurm", dry_run: bool = False,
    submit: Callable[..., Any] | None = None, code_now: Callable[[str], Mapping[str, Any] | None] | None = None,
) -> Reproduction:
    """Resubmit an archived run's resolved config as a new run that records ``reproduces``.

    Args:
        cat: the catalog.
        run_id: the run to reproduce.
        overrides: ``key=value`` changes (``--set``), applied to the archived resolved config.
        executor: ``slurm`` or ``local``.
        dry_run: resolve and warn, submit nothing.
        submit: submits a config (``submit(config, executor=..., reproduces=...)`` → a handle with
            ``to_dict()``): the CLI passes the launcher's, with the training job; tests their own.
            The catalog (the read side) never imports the launcher.
        code_now: the current code version of a directory (default: ``provenance.code_version``).

    Raises:
        RunNotFound, StoreError: the run or its run.json cannot be read.
        ConfigError: an override is invalid or the dataset no longer exists.
    """

    record = run_record(cat, run_id)
    if not isinstance(record.get("config"), dict):
        raise ConfigError(f"run.json of {run_id} has no resolved config to reproduce (written by an old version?)")
    code = record.get("code") or {}
    repo = code.get("repo")
    here = repo if repo and Path(repo).is_dir() else str(Path.cwd())
    checkout = None if dry_run else archived_code_checkout(code, Path(record["config"].get("runs_root") or "runs"))
    raw = rebase_paths(record["config"], repo, checkout) if checkout else record["config"]
    config = resolve_config(raw, list(overrides), source=f"{run_id}/run.json", check_paths=True)
    if checkout:
        config = replace(config, code_dir=str(checkout))
    code_here = (code_now or provenance.code_version)(str(checkout) if checkout else here)
    warnings = tuple(reproduction_warnings(record, current_environment(), code_here))
    if dry_run:
        return Reproduction(run_id, config.to_dict(), warnings)
    if submit is None:
        raise ConfigError("reproduce: nothing to submit with (the caller passes submit=)")
    handle = submit(config, executor=executor, reproduces=run_id)
    return Reproduction(run_id, config.to_dict(), warnings, handle.to_dict())
