"""Build the portal: read the index and the archives, render the pages, publish into the bucket.

Site layout (all links relative, so it works from a folder, ``file://``, ``report serve``,
S3 static hosting under any prefix, presigned links and a reverse proxy)::

    index.html                home: projects, runs over time, best run per project and task
    runs.html                 the runs table (filter by task and more, sort, pick runs to compare)
    compare.html              compare view: ?runs=A,B,... (loads run/<id>/data.js)
    data/runs.js              every index record the table needs (script-safe JSON)
    data/tasks.js             each task's metric fields (the table's columns when a task is picked)
    run/<run_id>.html         one page per run: its task's metrics, curves and plots
    run/<run_id>/data.js      params, task metrics and metric curves of the run (for the compare view)
    run/<run_id>/files/...    copies of the run's images and small text files
    static/portal.css|js      shipped in the package (no CDN: clusters are often offline)
    .portal-state.json        the incremental build state (not published)

Incremental: a run page is rebuilt only when the run's index record changed (its digest is
kept in ``.portal-state.json``), so a rebuild over 10,000 runs reads the index
plus the few changed runs' files. The cross-run pages are always rewritten from the index
(cheap), and a file is written (and published) only when its bytes changed.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from slurm_yolo.archive import layout
from slurm_yolo.store import split_url
from slurm_yolo.catalog.index import IndexLocation, get_object, list_keys, load_records, store_error
from slurm_yolo.catalog.runs import PER_RUN_ARGS
from slurm_yolo.errors import ConfigError, StoreError
from slurm_yolo.record import read_metrics
from slurm_yolo.runfolder import ARGS_YAML, RESULTS_CSV, RUN_JSON
from slurm_yolo.report import pages
from slurm_yolo.site import site_config_path
from slurm_yolo.tasks import installed_tasks

STATE_FILE = ".portal-state.json"
STATE_VERSION = 3  # bump when page templates change shape: every run page is rebuilt once
STATIC_FILES = ("portal.css", "portal.js")
# Small text files copied next to the run page so they open from the site itself.
TEXT_FILES = (RESULTS_CSV, ARGS_YAML, RUN_JSON, layout.MANIFEST)
# Runs built at once: each run is a handful of latency-bound GETs.
WORKERS = 8
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".html": "text/html; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".json": "application/json", ".csv": "text/csv; charset=utf-8",
                 ".yaml": "text/plain; charset=utf-8", ".txt": "text/plain; charset=utf-8"}


@dataclass(frozen=True)
class BuildResult:
    """What a build did.

    Attributes:
        out: the site folder.
        runs: runs in the index.
        rebuilt: run pages (re)built this time.
        unlinked: ``{run_id: reason}`` of runs listed without a page (see :func:`pages.linkable`).
        removed: run pages deleted (runs gone from the index).
        errors: ``{run_id: message}`` of runs whose archive could not be read (retried next build).
        published: files uploaded (``None``: not published).
        publish_url: where it was published.
        seconds: wall time.
    """

    out: str
    runs: int
    rebuilt: int
    unlinked: dict[str, str]
    removed: int
    errors: dict[str, str]
    published: int | None = None
    deleted: int = 0
    publish_url: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _State:
    """The build state file: run digests, and the sha256 of every file written/published."""

    runs: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    published: dict[str, str] = field(default_factory=dict)
    publish_url: str | None = None

    @classmethod
    def load(cls, out: Path) -> "_State":
        try:
            raw = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            return cls()  # another layout: rebuild everything once
        return cls(raw.get("runs") or {}, raw.get("files") or {}, raw.get("published") or {}, raw.get("publish_url"))

    def save(self, out: Path) -> None:
        tmp = out / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"version": STATE_VERSION, "runs": self.runs, "files": self.files,
                                   "published": self.published, "publish_url": self.publish_url},
                                  sort_keys=True), encoding="utf-8")
        os.replace(tmp, out / STATE_FILE)  # atomic: a killed build leaves the old state, never a torn one


def templates():
    """The Jinja2 environment: package templates, autoescaping on for every template.

    Why Jinja2 and not f-strings: every value on these pages can come from a user's run
    (project names, args, file names), and autoescaping makes escaping the default rather
    than something each line must remember.
    """
    import jinja2
    import markupsafe

    env = jinja2.Environment(loader=jinja2.PackageLoader("slurm_yolo.report", "templates"),
                             autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["script_json"] = lambda obj: markupsafe.Markup(pages.script_json(obj))
    env.filters["num"] = lambda v, d=4: (f"{v:.{d}f}" if isinstance(v, float) else ("" if v is None else v))
    return env


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Writer:
    """Writes site files only when their bytes changed, recording each file's sha256."""

    def __init__(self, out: Path, state: _State):
        self.out, self.state = out, state

    def write(self, rel: str, data: bytes | str) -> None:
        data = data.encode("utf-8") if isinstance(data, str) else data
        digest = _sha(data)
        path = self.out / rel
        if self.state.files.get(rel) == digest and path.is_file():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.state.files[rel] = digest

    def remove(self, rel: str) -> None:
        """Delete a file or a folder of the site, and forget it."""
        path = self.out / rel
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        for known in [r for r in self.state.files if r == rel or r.startswith(rel + "/")]:
            del self.state.files[known]


def build_site(cat: IndexLocation, out: str | Path, *, allowed_prefix: str | None = None, force: bool = False,
               client=None, workers: int = WORKERS) -> BuildResult:
    """Build (or update) the static portal in ``out`` from the index and the archives.

    Args:
        cat: the catalog (index URL + store).
        out: the site folder (created; keeps ``.portal-state.json`` between builds).
        allowed_prefix: the site config's ``allowed_prefix`` (``s3://bucket/runs/{user}/``):
            a run whose archive is outside its user's prefix is listed but gets no page.
        force: rebuild every run page.
        client: a boto3 client (default: the catalog store's).
        workers: runs read from the store at once.

    Raises:
        StoreError: the index cannot be read (a run whose archive cannot be read is only
            reported in :attr:`BuildResult.errors` and retried next time).
    """
    started = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    client = client or cat.store.boto3_client()
    state = _State() if force else _State.load(out)
    writer = _Writer(out, state)
    records = sorted(load_records(cat, client), key=lambda record: str(record.get("run_id")))
    unlinked = {str(record.get("run_id")): why for record in records if (why := pages.linkable(record, allowed_prefix))}
    linked = [record for record in records if str(record.get("run_id")) not in unlinked]
    env = templates()
    selection = task_selection()
    for name in STATIC_FILES:
        writer.write(f"static/{name}", resources.files("slurm_yolo.report").joinpath("static", name).read_bytes())

    digests = {record["run_id"]: pages.record_digest(record) for record in linked}
    todo = [record for record in linked if state.runs.get(record["run_id"]) != digests[record["run_id"]]
            or not (out / f"run/{record['run_id']}.html").is_file()]
    errors: dict[str, str] = {}

    def one(record: Mapping[str, Any]) -> tuple[str, dict[str, bytes] | None, str | None]:
        try:
            return record["run_id"], _run_files(cat, client, env, record, selection), None
        except StoreError as e:
            return record["run_id"], None, str(e)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for run_id, files, error in pool.map(one, todo):
            if error is not None:
                # Its old page (if any) stays, with its old digest: the run is retried next build.
                errors[run_id] = error
                continue
            assert files is not None
            for rel, data in files.items():
                writer.write(rel, data)
            state.runs[run_id] = digests[run_id]

    # Runs that left the index (pruned) or lost their link: their pages go.
    keep = {record["run_id"] for record in linked}
    gone = [r for r in state.runs if r not in keep]
    for run_id in gone:
        del state.runs[run_id]
        writer.remove(f"run/{run_id}")
        writer.remove(f"run/{run_id}.html")

    now = pages.now_utc()
    rows = [pages.table_row(record, record["run_id"] in state.runs) for record in records]
    writer.write("data/runs.js", "window.PORTAL_RUNS = " + pages.script_json(rows) + ";\n")
    writer.write("data/tasks.js", "window.PORTAL_METRIC_FIELDS = "
                 + pages.script_json(pages.metric_fields_by_task(records)) + ";\n")
    unit, bars = pages.runs_over_time(records)
    common = {"root": "", "built": now.strftime("%Y-%m-%d %H:%M UTC"), "index_url": cat.index_url}
    projects = pages.project_summary(records)
    for p in projects:
        best = p["best"]
        p["best_link"] = bool(best) and best.get("run_id") in state.runs
    writer.write("index.html", env.get_template("home.html").render(
        **common, page="home", projects=projects, runs=len(records), linked=len(state.runs),
        unlinked=unlinked, over_time=pages.bar_chart(f"runs submitted per {unit}", bars),
        states=dict(Counter(str(record.get("end_state")) for record in records).most_common())))
    writer.write("runs.html", env.get_template("runs.html").render(**common, page="runs", runs=len(records)))
    writer.write("compare.html", env.get_template("compare.html").render(**common, page="compare"))
    state.save(out)
    return BuildResult(out=str(out), runs=len(records), rebuilt=len(todo) - len(errors), unlinked=unlinked,
                       removed=len(gone), errors=errors, seconds=round(time.monotonic() - started, 3))


def task_selection() -> dict[str, str]:
    """``{task: selection column}`` of the installed Ultralytics; ``{}`` where it is not
    installed (a portal host needs no training stack: records carry their ``fitness_metric``,
    and older ones fall back to detection's column)."""
    try:
        return dict(installed_tasks().selection)
    except ConfigError:
        return {}


def _get(client, url: str) -> bytes | None:
    bucket, key = split_url(url)
    got = get_object(client, bucket, key)
    return got[0] if got else None


def _archived_files(client, url: str, manifest: Mapping[str, Any] | None) -> dict[str, int]:
    """``{relative path: size}`` of the archived run: from its manifest, else by listing."""
    files = (manifest or {}).get("files")
    if isinstance(files, dict) and files:
        out = {rel: int(f.get("size") or 0) for rel, f in files.items() if isinstance(f, dict)}
    else:
        bucket, prefix = split_url(url)
        out = {obj["Key"][len(prefix):]: int(obj.get("Size") or 0) for obj in list_keys(client, bucket, prefix)}
    return out


def _load_json(data: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(data) if data else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _run_files(cat: IndexLocation, client, env, indexed: Mapping[str, Any],
               selection: Mapping[str, str]) -> dict[str, bytes]:
    """Every site file of one run: its page, its data.js, and the copied images/text files."""
    run_id, url = indexed["run_id"], indexed["archive_url"]
    fetched = {name: _get(client, url + name) for name in (layout.MANIFEST, RUN_JSON)}
    manifest, record = _load_json(fetched[layout.MANIFEST]), _load_json(fetched[RUN_JSON])
    archived = _archived_files(client, url, manifest)
    # The manifest lists every file but run.json and itself (both are uploaded last).
    archived.update({name: len(data) for name, data in fetched.items() if data is not None})
    out: dict[str, bytes] = {}
    copied: set[str] = set()
    for rel in TEXT_FILES:
        if rel in archived:
            data = fetched[rel] if rel in fetched else _get(client, url + rel)
            if data is not None:
                out[f"run/{run_id}/files/{rel}"] = data
                copied.add(rel)
    sections = pages.image_sections(r for r in archived if pages.safe_rel(r))
    for rel in sorted({r for rs in sections.values() for r in rs}):
        if archived.get(rel, 0) <= pages.MAX_IMAGE_BYTES:
            data = _get(client, url + rel)
            if data is not None:
                out[f"run/{run_id}/files/{pages.safe_rel(rel)}"] = data
                copied.add(rel)
    csv_text = out.get(f"run/{run_id}/files/{RESULTS_CSV}", b"").decode("utf-8", "replace")
    cols = pages.parse_results_csv(csv_text)
    args = yaml_mapping(out.get(f"run/{run_id}/files/{ARGS_YAML}"))
    best = _best_epoch(csv_text, pages.fitness_column(indexed, list(cols), selection, record))
    metrics = pages.task_metrics(indexed, cols, best)
    charts = [pages.line_chart(title, series) for title, series in pages.curve_groups(cols, metrics.column)]
    files = [{"rel": rel, "size": size, "href": f"{run_id}/files/{pages.safe_rel(rel)}" if rel in copied else None,
              "url": url + rel} for rel, size in sorted(archived.items())]
    attempts = [a for a in record.get("attempts") or [] if isinstance(a, dict)]
    page = env.get_template("run.html").render(
        root="../", page="run", built=pages.now_utc().strftime("%Y-%m-%d %H:%M UTC"), index_url=cat.index_url,
        indexed=indexed, record=record, args=args, metrics=metrics, charts=charts, files=files,
        sections={k: [(r, f"{run_id}/files/{pages.safe_rel(r)}") for r in v if r in copied]
                  for k, v in sections.items()},
        attempts=attempts, timeline=pages.timeline_chart(attempts),
        config=yaml.safe_dump(record.get("config"), sort_keys=False) if record.get("config") else "",
        commands={"fetch": f"slurm-yolo runs fetch {run_id} --to ./{run_id}",
                  "reproduce": f"slurm-yolo reproduce {run_id}",
                  "show": f"slurm-yolo runs show {run_id}"})
    out[f"run/{run_id}.html"] = page.encode("utf-8")
    run_data = {"run_id": run_id, "project": indexed.get("project"), "task": indexed.get("task"),
                "end_state": indexed.get("end_state"), "epochs_done": indexed.get("epochs_done"),
                "fitness_metric": metrics.field, "fitness_column": metrics.column, "fitness": metrics.value,
                # A list, not a mapping: the table keeps results.csv's column order (JSON keys are sorted).
                "metrics": [[f, v] for f, _, v in metrics.rows],
                "args": {k: v for k, v in args.items() if k not in PER_RUN_ARGS},
                "curves": pages.metric_curves(cols)}
    out[f"run/{run_id}/data.js"] = ("window.portalRunData(" + pages.script_json(run_data) + ");\n").encode()
    return out


def _best_epoch(csv_text: str, column: str | None) -> dict[str, Any] | None:
    """The best epoch of an archived ``results.csv`` by ``column``, chosen by the very rule the
    job and the epilog use (:func:`slurm_yolo.record.read_metrics`, which reads a file)."""
    if not csv_text.strip():
        return None
    with tempfile.TemporaryDirectory(prefix="slurm-yolo-portal-") as tmp:
        path = Path(tmp) / RESULTS_CSV
        path.write_text(csv_text, encoding="utf-8")
        return read_metrics(path, column)


def yaml_mapping(data: bytes | None) -> dict[str, Any]:
    """``args.yaml`` as a dict (``{}`` when missing or not a mapping: a torn upload must not stop the build)."""
    try:
        value = yaml.safe_load(data) if data else None
    except yaml.YAMLError:
        return {}
    return value if isinstance(value, dict) else {}


def default_publish_url(cat: IndexLocation) -> str:
    """``s3://<index bucket>/portal/``: next to the index, outside every run prefix."""
    return f"s3://{cat.bucket}/portal/"


def publish(cat: IndexLocation, out: str | Path, url: str, *, client=None) -> tuple[int, int]:
    """Upload the files of ``out`` that changed since the last publish to ``url``; delete
    the ones the site no longer has. Return ``(uploaded, deleted)``.

    Each object gets its Content-Type (S3 static hosting serves it as stored). The index and
    the runs are never touched: ``url`` must not contain them or lie inside them.

    Raises:
        ConfigError: ``url`` overlaps the index. StoreError: an upload failed (the state keeps
            what did upload; the next publish finishes).
    """
    out = Path(out)
    bucket, prefix = split_url(url)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    target = f"s3://{bucket}/{prefix}"
    if not prefix or cat.index_url.startswith(target) or target.startswith(cat.index_url):
        raise ConfigError(f"--publish-url {url}: must be its own prefix, e.g. s3://{cat.bucket}/portal/, "
                          f"apart from the index {cat.index_url}")
    state = _State.load(out)
    if not state.files:
        raise ConfigError(f"{out} has no built site; run `slurm-yolo report build --out {out}` first")
    if state.publish_url != target:
        state.published = {}  # a new destination gets everything
    client = client or cat.store.boto3_client()
    todo = [rel for rel, sha in sorted(state.files.items()) if state.published.get(rel) != sha]

    def put(rel: str) -> str:
        body = (out / rel).read_bytes()
        ctype = CONTENT_TYPES.get(Path(rel).suffix) or mimetypes.guess_type(rel)[0] or "application/octet-stream"
        try:
            client.put_object(Bucket=bucket, Key=prefix + rel, Body=body, ContentType=ctype)
        except Exception as e:
            raise store_error("publish", f"s3://{bucket}/{prefix}{rel}", e) from e
        return rel

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            for rel in pool.map(put, todo):
                state.published[rel] = state.files[rel]
        stale = [rel for rel in state.published if rel not in state.files]
        for i in range(0, len(stale), 1000):
            chunk = stale[i:i + 1000]
            try:
                client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": prefix + r} for r in chunk],
                                                             "Quiet": True})
            except Exception as e:
                raise store_error("publish (delete)", f"s3://{bucket}/{prefix}{chunk[0]}", e) from e
            for rel in chunk:
                del state.published[rel]
    finally:
        state.publish_url = target
        state.save(out)
    return len(todo), len(stale)


def site_allowed_prefix(env: Mapping[str, str] | None = None) -> str | None:
    """``allowed_prefix`` from the site config, or ``None`` when there is no site config.

    Read as plain YAML (like the catalog reads ``index_url``): only the public URL is needed,
    not the root-only checks the epilog makes.
    """

    path = site_config_path(dict(os.environ if env is None else env))
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read the site config {path}: {e}; pass --allowed-prefix") from e
    value = raw.get("allowed_prefix") if isinstance(raw, dict) else None
    return value if isinstance(value, str) and value.startswith("s3://") else None
