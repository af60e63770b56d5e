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
    usage.html                what the archive holds and what the runs used, per project
    static/portal.css|js      shipped in the package (no CDN: clusters are often offline)
    .portal-state.json        the incremental build state (not published)

Incremental: a build first lists the index (pending updates and quarterly files, with their
ETags, :func:`index_fingerprint`); when that is what the last complete build saw, it stops there
(two or three requests, whatever the number of runs). Otherwise a run page is rebuilt only when
the run's index record changed (its digest is kept in ``.portal-state.json``).

A run page fills in over three tiers, each fetched in bulk (one s5cmd per batch of runs, straight
into the site folder) while the previous batch is rendered, newest runs first:

1. **summary**, every changed run in every build: its index record and its ``run.json``
   (metrics, attempts, config, commands); one object per run;
2. **details**, at most :data:`MAX_DETAILS` runs per build: ``results.csv`` (curves),
   ``args.yaml`` (parameters) and the manifest (the file list);
3. **images**, at most :data:`MAX_IMAGES` per build, of runs that have their details.

A page whose details or images are not copied yet says so, and the next builds (the drain
timer's) fill it in, so a first build over a year of runs pages every run in about a minute
(fetching every object of 10,000 runs costs minutes here: see docs/benchmarks.md). The
cross-run pages are rewritten from the index, and a file is written (and published) only when
its bytes changed.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from slurm_yolo.archive import layout, s5cmd
from slurm_yolo.archive.index_format import PARTS
from slurm_yolo.archive.index_store import LEGACY_JSONL, etag_now
from slurm_yolo.store import split_url
from slurm_yolo.catalog import usage
from slurm_yolo.catalog.index import PENDING, IndexLocation, get_object, list_keys, load_records, store_error
from slurm_yolo.catalog.runs import PER_RUN_ARGS
from slurm_yolo.errors import ConfigError, StoreError
from slurm_yolo.record import read_metrics
from slurm_yolo.runfolder import ARGS_YAML, RESULTS_CSV, RUN_JSON
from slurm_yolo.report import pages
from slurm_yolo.site import site_config_path
from slurm_yolo.tasks import installed_tasks

STATE_FILE = ".portal-state.json"
# What an unchanged build reads: the fingerprint and summary of the last complete build, apart
# from the state file (~100 bytes a file of the site: ~20 MB at 10,000 runs, 0.3 s to parse).
# Its name contains STATE_FILE's, so `report serve` hides it too.
STATE_HEAD = STATE_FILE + ".head"
STATE_VERSION = 5  # bump when page templates change shape: every run page is rebuilt once
STATIC_FILES = ("portal.css", "portal.js")
# The pages rewritten from the whole index by every build that is not skipped as unchanged.
CROSS_RUN_PAGES = ("index.html", "runs.html", "compare.html", "usage.html", "data/runs.js", "data/tasks.js")
# Small text files copied next to the run page so they open from the site itself: the run's
# record for every page at once (tier 1), the others under the details budget (tier 2).
SUMMARY_FILES = (RUN_JSON,)
DETAIL_FILES = (RESULTS_CSV, ARGS_YAML, layout.MANIFEST)
TEXT_FILES = SUMMARY_FILES + DETAIL_FILES
# boto3 requests at once (listings, files s5cmd cannot be given, fetch="boto3"): latency-bound.
WORKERS = 8
# Images copied per build. A run's images are its most numerous objects (15-20 plots for a
# detect run); a first build over 10,000 runs copies those of the newest ~330 and pages every
# run, and each later build copies the next batch (see build_site).
MAX_IMAGES = 5_000
# Runs whose details (results.csv, args.yaml, manifest: 3 objects and the curves to draw) are
# copied per build. Each costs ~3 ms of store and client CPU and ~4 ms of rendering here: with
# the run records of 10,000 runs this keeps a first build within a minute on 2 cores.
MAX_DETAILS = 1_000
# Runs per download batch: the next batches download while this one is rendered (a small
# first batch: the renderer starts as soon as the newest runs' files are in).
CHUNK = 200
CHUNKS_AHEAD = 4
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
        deferred: runs whose pages wait for their images (copied by the next builds).
        pending: runs whose pages wait for their details (curves, parameters, file list; the
            next builds copy them, newest first); their images wait too.
        unchanged: the index was as the last complete build left it: nothing was read or written.
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
    deferred: int = 0
    pending: int = 0
    unchanged: bool = False
    published: int | None = None
    deleted: int = 0
    publish_url: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _State:
    """The build state file: run digests, the sha256 of every file written/published, the
    index fingerprint of the last complete build, the runs whose details (``pending``) and
    images (``deferred``) are still to come."""

    runs: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    published: dict[str, str] = field(default_factory=dict)
    publish_url: str | None = None
    fingerprint: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    deferred: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, out: Path) -> "_State":
        try:
            raw = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            return cls()  # another layout: rebuild everything once
        return cls(raw.get("runs") or {}, raw.get("files") or {}, raw.get("published") or {}, raw.get("publish_url"),
                   raw.get("fingerprint"), raw.get("summary") or {}, raw.get("deferred") or [],
                   raw.get("pending") or [])

    def save(self, out: Path) -> None:
        tmp = out / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"version": STATE_VERSION, "runs": self.runs, "files": self.files,
                                   "published": self.published, "publish_url": self.publish_url,
                                   "fingerprint": self.fingerprint, "summary": self.summary,
                                   "deferred": self.deferred, "pending": self.pending},
                                  sort_keys=True), encoding="utf-8")
        os.replace(tmp, out / STATE_FILE)  # atomic: a killed build leaves the old state, never a torn one


def _read_head(out: Path) -> dict[str, Any]:
    try:
        head = json.loads((out / STATE_HEAD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return head if isinstance(head, dict) and head.get("version") == STATE_VERSION else {}


def _write_head(out: Path, state: _State) -> None:
    tmp = out / (STATE_HEAD + ".tmp")
    tmp.write_text(json.dumps({"version": STATE_VERSION, "fingerprint": state.fingerprint,
                               "summary": state.summary}), encoding="utf-8")
    os.replace(tmp, out / STATE_HEAD)


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
    env.filters["human_bytes"] = pages.human_bytes
    env.filters["num"] = lambda v, d=4: (f"{v:.{d}f}" if isinstance(v, float) else ("" if v is None else v))
    return env


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Writer:
    """Writes site files only when their bytes changed, recording each file's sha256."""

    def __init__(self, out: Path, state: _State):
        self.out, self.state = out, state
        self.folders: set[Path] = set()  # made by this build: a first build writes 20,000 files into 10,000

    def write(self, rel: str, data: bytes | str) -> None:
        data = data.encode("utf-8") if isinstance(data, str) else data
        digest = _sha(data)
        path = self.out / rel
        if self.state.files.get(rel) == digest and path.is_file():
            return
        if path.parent not in self.folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.folders.add(path.parent)
        try:
            # A new file is written in place (one open, no rename): a build killed half-way
            # saves no state, so the next build writes it again.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            # One that a reader (serve, publish) may be reading is replaced whole, never torn.
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        self.state.files[rel] = digest

    def remove(self, rel: str) -> None:
        """Delete a file or a folder of the site, and forget it."""
        path = self.out / rel
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            self.folders = {f for f in self.folders if f != path and path not in f.parents}
        else:
            path.unlink(missing_ok=True)
        for known in [r for r in self.state.files if r == rel or r.startswith(rel + "/")]:
            del self.state.files[known]


def build_site(cat: IndexLocation, out: str | Path, *, allowed_prefix: str | None = None, force: bool = False,
               client=None, workers: int = WORKERS, fetch: str = "presigned", max_images: int | None = MAX_IMAGES,
               max_details: int | None = MAX_DETAILS) -> BuildResult:
    """Build (or update) the static portal in ``out`` from the index and the archives.

    A build first lists the index (its pending updates and quarterly files, with their
    ETags): when that listing is the one the last complete build saw, nothing changed and
    nothing else is read. Otherwise it reads the index, and for the runs whose record
    changed downloads their ``run.json`` in bulk, then (newest runs first) the details of at
    most ``max_details`` runs and at most ``max_images`` images: the older runs' pages say
    what they still wait for and are rebuilt when it arrives, so a first build over a year of
    runs pages every run without waiting for every curve and plot.

    Args:
        cat: the catalog (index URL + store).
        out: the site folder (created; keeps ``.portal-state.json`` between builds).
        allowed_prefix: the site config's ``allowed_prefix`` (``s3://bucket/runs/{user}/``):
            a run whose archive is outside its user's prefix is listed but gets no page.
        force: rebuild every run page.
        client: a boto3 client (default: the catalog store's).
        workers: requests at once from threads (GETs with ``fetch="presigned"`` or
            ``"boto3"``, the listings of runs without a manifest, files whose names s5cmd
            cannot be given).
        fetch: ``"presigned"`` (a thread pool of GETs of presigned URLs: the least CPU per
            object), ``"s5cmd"`` (one s5cmd process per batch) or ``"boto3"`` (a thread pool of
            ``get_object``); the same files either way.
        max_images: images copied per build (``None``: all).
        max_details: runs whose ``results.csv``, ``args.yaml`` and manifest are copied per
            build (``None``: all).

    Raises:
        StoreError: the index cannot be read (a run whose archive cannot be read is only
            reported in :attr:`BuildResult.errors` and retried next time).
    """
    started = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    client = client or cat.store.boto3_client()
    fingerprint = index_fingerprint(cat, client, allowed_prefix)
    head = {} if force else _read_head(out)
    if head.get("fingerprint") == fingerprint and head.get("summary") and all((out / p).is_file()
                                                                              for p in CROSS_RUN_PAGES):
        summary = head["summary"]
        return BuildResult(out=str(out), runs=int(summary.get("runs") or 0), rebuilt=0,
                           unlinked=dict(summary.get("unlinked") or {}), removed=0, errors={},
                           unchanged=True, seconds=round(time.monotonic() - started, 3))
    # From here the site changes: until this build has saved its state, no build may skip.
    (out / STATE_HEAD).unlink(missing_ok=True)
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
    deferred, pending = set(state.deferred), set(state.pending)
    # Newest first: when a budget runs out, the runs people look at have theirs.
    todo = sorted((record for record in linked if state.runs.get(record["run_id"]) != digests[record["run_id"]]
                   or record["run_id"] in deferred or record["run_id"] in pending
                   or not (out / f"run/{record['run_id']}.html").is_file()),
                  key=lambda record: str(record["run_id"]), reverse=True)
    fetcher = _Fetcher(cat, client, writer, fetch, workers)
    runs = []
    for record in todo:
        run = _RunFiles(record, f"run/{record['run_id']}/files/")
        if state.runs.get(record["run_id"]) == digests[record["run_id"]]:
            # The same record as when its files were copied: what is in the site is current.
            run.reuse(out, state.files, details=record["run_id"] not in pending)
        runs.append(run)
    errors: dict[str, str] = {}
    for run in fetcher.pipeline(runs, max_images, max_details):
        run_id = run.record["run_id"]
        if run.error:
            # Its old page (if any) stays, with its old digest: the run is retried next build.
            errors[run_id] = run.error
            continue
        for rel, data in _render_run(cat, env, run, selection, writer.out).items():
            writer.write(rel, data)
        state.runs[run_id] = digests[run_id]
        deferred.discard(run_id)
        pending.discard(run_id)
        if run.details_pending:
            pending.add(run_id)
        elif run.images_deferred:
            deferred.add(run_id)

    # Runs that left the index (pruned) or lost their link: their pages go.
    keep = {record["run_id"] for record in linked}
    gone = [r for r in state.runs if r not in keep]
    for run_id in gone:
        del state.runs[run_id]
        writer.remove(f"run/{run_id}")
        writer.remove(f"run/{run_id}.html")
    deferred &= keep
    pending &= keep
    state.deferred, state.pending = sorted(deferred), sorted(pending)

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
    writer.write("usage.html", usage_page(env, common, records))
    # Saved only when nothing is left for a later build: then an unchanged index means an unchanged site.
    state.fingerprint = fingerprint if not errors and not deferred and not pending else None
    state.summary = {"runs": len(records), "unlinked": unlinked}
    state.save(out)
    if state.fingerprint:
        _write_head(out, state)
    return BuildResult(out=str(out), runs=len(records), rebuilt=len(todo) - len(errors), unlinked=unlinked,
                       removed=len(gone), errors=errors, deferred=len(deferred), pending=len(pending),
                       seconds=round(time.monotonic() - started, 3))


def usage_page(env, common: Mapping[str, Any], records: list[dict[str, Any]]) -> str:
    """The usage page: ``store usage``'s table per project (:func:`slurm_yolo.catalog.usage.usage_table`)
    and each project's bytes in the store over time."""
    rows = usage.usage_table(records, by="project")
    unit, first, series = pages.bytes_over_time(records)
    top = max((y for pts in series.values() for _, y in pts), default=0.0)
    scale, name = next(((10 ** e, n) for e, n in ((12, "TB"), (9, "GB"), (6, "MB"), (3, "kB")) if top >= 10 ** e),
                       (1, "bytes"))
    # In the unit of the largest value: axis ticks of 1.2e+09 bytes read badly.
    scaled = {p: [(x, y / scale) for x, y in pts] for p, pts in series.items()}
    chart = pages.line_chart(f"{name} kept per project", scaled, x_label=f"{unit}s since {first}",
                             box=pages.ChartBox(width=760)) if series else ""
    return env.get_template("usage.html").render(**common, page="usage", rows=rows, total=usage.totals(rows),
                                                 chart=chart)


def index_fingerprint(cat: IndexLocation, client, allowed_prefix: str | None) -> str:
    """What the site depends on, in a few listing requests: every key of the index's pending
    updates and quarterly files with its ETag (a legacy ``INDEX.jsonl``'s when there is no
    quarter), the allowed prefix and the page layout version.

    An epilog's update is a new pending key, a compaction rewrites a quarter (new ETag) and
    deletes pending keys, a prune rewrites quarters: each changes this value, so an equal value
    means the index holds the records the last build read.

    Raises:
        StoreError: the index cannot be listed.
    """
    parts: list[Any] = [STATE_VERSION, allowed_prefix, cat.index_url]
    for prefix in (PENDING, PARTS):
        parts.append([(obj["Key"], obj.get("ETag"), obj.get("Size")) for obj in list_keys(client, cat.bucket,
                                                                                          cat.key(prefix))])
    if not parts[-1]:
        parts.append(etag_now(client, cat.bucket, cat.key(LEGACY_JSONL)))
    return _sha(json.dumps(parts, default=str).encode())


def task_selection() -> dict[str, str]:
    """``{task: selection column}`` of the installed Ultralytics; ``{}`` where it is not
    installed (a portal host needs no training stack: records carry their ``fitness_metric``,
    and older ones fall back to detection's column)."""
    try:
        return dict(installed_tasks().selection)
    except ConfigError:
        return {}


class _RunFiles:
    """One run being built: its index record, what its archive holds, what was copied."""

    def __init__(self, record: Mapping[str, Any], files_rel: str):
        self.record, self.files_rel = record, files_rel
        self.url: str = record["archive_url"]
        self.copied: set[str] = set()  # archived paths now in the site folder
        self.data: dict[str, bytes] = {}  # the text files this build fetched, by archived path
        self.archived: dict[str, int] | None = None  # {path: size} from the manifest or a listing
        self.error: str | None = None
        self.images_deferred = False
        self.details_pending = False
        self.details_here = False  # its details are in the site already (a build before copied them)

    def reuse(self, out: Path, files: Mapping[str, str], *, details: bool) -> None:
        """Take the text files a build before copied (its run.json, and the details if ``details``)."""
        for rel in SUMMARY_FILES + (DETAIL_FILES if details else ()):
            if self.site_rel(rel) in files and (out / self.site_rel(rel)).is_file():
                self.copied.add(rel)
        self.details_here = details

    def site_rel(self, rel: str) -> str:
        return self.files_rel + (pages.safe_rel(rel) or "")

    def manifest(self, out: Path) -> dict[str, Any]:
        if layout.MANIFEST not in self.copied:
            return {}
        data = self.data.get(layout.MANIFEST)
        return _load_json(data if data is not None else (out / self.site_rel(layout.MANIFEST)).read_bytes())

    def resolve(self, out: Path) -> None:
        """What the archive holds, from its manifest (``archived`` stays ``None`` without one)."""
        files = self.manifest(out).get("files")
        if isinstance(files, dict) and files:
            self.archived = {rel: int(f.get("size") or 0) for rel, f in files.items() if isinstance(f, dict)}
            self._add_records(out)

    def _add_records(self, out: Path) -> None:
        assert self.archived is not None
        # The manifest lists every file but run.json and itself (both are uploaded last).
        for name in (layout.MANIFEST, RUN_JSON):
            if name in self.copied:
                self.archived[name] = (out / self.site_rel(name)).stat().st_size
        # A text file the archive does not list is not shown (it was fetched on the chance it exists).
        self.copied = {rel for rel in self.copied if rel in self.archived}

    def wanted_images(self) -> list[str]:
        assert self.archived is not None
        sections = pages.image_sections(r for r in self.archived if pages.safe_rel(r))
        return sorted(rel for rel in {r for rs in sections.values() for r in rs}
                      if self.archived.get(rel, 0) <= pages.MAX_IMAGE_BYTES)


# Characters of a URL or site path given to s5cmd: its run files are split on spaces and its
# error lines print commands unquoted; anything else goes through boto3.
_S5CMD_SAFE = re.compile(r"[A-Za-z0-9_.,=+@:/-]+")


class _PresignedGet:
    """GETs of presigned URLs over one urllib3 pool: ``get(url)`` is the object's bytes, ``None``
    when it does not exist.

    Why not boto3's ``get_object``: here it costs ~1.4 ms of client CPU per object (its event
    system, parsers and signer), a presigned URL and a bare GET ~0.6 ms, and a first build
    fetches one run record per run. The URL is signed by the same boto3 client (its
    credentials, region and endpoint); TLS trusts ``AWS_CA_BUNDLE`` as botocore does, and a
    proxy from the environment (``HTTPS_PROXY``, ``NO_PROXY``) is used as urllib does.
    """

    def __init__(self, client, workers: int, env: Mapping[str, str] | None = None):
        import urllib.request
        from urllib.parse import urlsplit

        import urllib3

        env = dict(os.environ if env is None else env)
        self.client = client
        endpoint = urlsplit(client.meta.endpoint_url)
        kw: dict[str, Any] = {"maxsize": max(1, workers), "retries": urllib3.Retry(
            total=3, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)), "timeout": urllib3.Timeout(
            connect=5, read=30)}
        if env.get("AWS_CA_BUNDLE"):
            kw["ca_certs"] = env["AWS_CA_BUNDLE"]
        proxy = urllib.request.getproxies().get(endpoint.scheme)
        if proxy and not urllib.request.proxy_bypass(endpoint.hostname or ""):
            self.http: Any = urllib3.ProxyManager(proxy, **kw)
        else:
            self.http = urllib3.PoolManager(**kw)

    def __call__(self, url: str) -> bytes | None:
        bucket, key = split_url(url)
        try:
            signed = self.client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                        ExpiresIn=3600)
            got = self.http.request("GET", signed, preload_content=True)
        except Exception as e:  # urllib3's connection and retry errors, botocore's credential errors
            raise store_error("read", url, e) from e
        if got.status == 200:
            return got.data
        if got.status == 404:
            return None
        # S3's XML error text names the cause (AccessDenied, SignatureDoesNotMatch...).
        code = re.search(rb"<Code>([^<]{1,64})</Code>", got.data or b"")
        raise StoreError(f"cannot read {url}: HTTP {got.status}"
                         + (f" {code[1].decode(errors='replace')}" if code else "")
                         + "; check the store's credentials and endpoint (or try --fetch boto3)")


# How a build downloads archived files (see :class:`_Fetcher`).
FETCHERS = ("presigned", "s5cmd", "boto3")


class _Fetcher:
    """Downloads archived files into the site folder, in bulk, and records what arrived."""

    def __init__(self, cat: IndexLocation, client, writer: _Writer, how: str, workers: int):
        if how not in FETCHERS:
            raise ConfigError(f"fetch={how!r}: use one of {', '.join(FETCHERS)}")
        self.cat, self.client, self.writer, self.how, self.workers = cat, client, writer, how, max(1, workers)
        self.read = _PresignedGet(client, self.workers) if how == "presigned" else lambda url: _get(client, url)

    def pipeline(self, runs: list[_RunFiles], max_images: int | None,
                 max_details: int | None = None) -> Iterator[_RunFiles]:
        """Yield ``runs`` with their files in the site folder, :data:`CHUNK` at a time.

        The downloads of the next chunk run in a thread while the caller renders this one: s5cmd
        and the store then use the CPU the renderer leaves (pages are Python, under one lock).
        """
        chunks: queue.Queue = queue.Queue(maxsize=CHUNKS_AHEAD)

        def fetch_all() -> None:
            budget: tuple[int | None, int | None] = (max_details, max_images)
            try:
                for i in range(0, len(runs), CHUNK):
                    budget = self.fetch_chunk(runs[i:i + CHUNK], *budget)
                    chunks.put(runs[i:i + CHUNK])
            except BaseException as e:  # handed to the caller's thread, raised there
                chunks.put(e)
            chunks.put(None)

        thread = threading.Thread(target=fetch_all, name="portal-fetch", daemon=True)
        thread.start()
        try:
            while (chunk := chunks.get()) is not None:
                if isinstance(chunk, BaseException):
                    raise chunk
                yield from chunk
        finally:
            while thread.is_alive():  # a caller that stops early must not leave the thread blocked on put
                try:
                    chunks.get(timeout=0.1)
                except queue.Empty:
                    pass

    def fetch_chunk(self, runs: list[_RunFiles], details: int | None, budget: int | None
                    ) -> tuple[int | None, int | None]:
        """The run records, then the details of ``details`` runs, then their images within
        ``budget``; returns the budgets left (runs, images)."""
        self.get([(run, rel) for run in runs for rel in SUMMARY_FILES if rel not in run.copied])
        fetch = []
        for run in runs:
            if run.error or run.details_here:
                continue
            if details is not None and details <= 0:
                run.details_pending = run.images_deferred = True
                continue
            details = None if details is None else details - 1
            fetch.append(run)
        self.get([(run, rel) for run in fetch for rel in DETAIL_FILES])
        with_details = [run for run in runs if not run.error and not run.details_pending]
        for run in with_details:
            if run.archived is None:
                run.resolve(self.writer.out)
        self.list_unlisted(with_details)
        wanted = []
        for run in with_details:
            if run.error:
                continue
            images = run.wanted_images()
            if budget is not None and len(images) > budget:
                run.images_deferred = True
                budget = 0  # later (older) runs wait too: newest first, whatever their size
                continue
            budget = None if budget is None else budget - len(images)
            wanted += [(run, rel) for rel in images]
        self.get(wanted)
        return details, budget

    def get(self, jobs: list[tuple[_RunFiles, str]]) -> None:
        """Copy ``(run, archived path)`` pairs; a missing object is skipped, a failure marks its run."""
        jobs = [(run, rel) for run, rel in jobs if pages.safe_rel(rel)]
        bulk = [(run, rel) for run, rel in jobs if self.how == "s5cmd" and _S5CMD_SAFE.fullmatch(run.url + rel)
                and _S5CMD_SAFE.fullmatch(run.site_rel(rel))]
        chosen = {(id(run), rel) for run, rel in bulk}
        rest = [(run, rel) for run, rel in jobs if (id(run), rel) not in chosen]
        retry = self._s5cmd(bulk) if bulk else []
        self._threads(rest + retry)
        for run, _ in jobs:
            if run.archived is None and not run.error:
                run.resolve(self.writer.out)

    def _s5cmd(self, jobs: list[tuple[_RunFiles, str]]) -> list[tuple[_RunFiles, str]]:
        """Download ``jobs`` with one s5cmd; return those that failed for another reason than a missing key."""
        out = self.writer.out
        by_dest = {str(out / run.site_rel(rel)): (run, rel) for run, rel in jobs}
        for dest in by_dest:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(f"cp --raw {run.url + rel} {dest}\n" for dest, (run, rel) in by_dest.items())
        result = s5cmd.run(s5cmd.base_argv(self.cat.store) + ["run"], self.cat.store, stdin_text=lines,
                           timeout=max(600.0, len(jobs) / 20))
        done = set()
        for o in result.outcomes:
            if o.ok and o.destination in by_dest:
                done.add(o.destination)
                run, rel = by_dest[o.destination]
                self._arrived(run, rel, Path(o.destination))
            elif not o.ok and o.error_class == s5cmd.ErrorClass.MISSING_SOURCE and o.destination in by_dest:
                done.add(o.destination)
        return [job for dest, job in by_dest.items() if dest not in done]

    def _threads(self, jobs: list[tuple[_RunFiles, str]]) -> None:
        def one(job: tuple[_RunFiles, str]) -> tuple[_RunFiles, str, bytes | None, str | None]:
            run, rel = job
            try:
                return run, rel, self.read(run.url + rel), None
            except StoreError as e:
                return run, rel, None, str(e)

        with ThreadPoolExecutor(self.workers) as pool:
            for run, rel, data, error in pool.map(one, jobs):
                if error is not None:
                    run.error = run.error or error
                elif data is not None:
                    self.writer.write(run.site_rel(rel), data)
                    run.copied.add(rel)
                    if rel in TEXT_FILES:
                        run.data[rel] = data  # rendered from memory: no second open of the file

    def _arrived(self, run: _RunFiles, rel: str, path: Path) -> None:
        # s5cmd wrote the file in place: only its digest is recorded (what publish compares).
        data = path.read_bytes()
        self.writer.state.files[run.site_rel(rel)] = _sha(data)
        run.copied.add(rel)
        if rel in TEXT_FILES:
            run.data[rel] = data

    def list_unlisted(self, runs: list[_RunFiles]) -> None:
        """The archived files of runs without a manifest, by listing their folders."""
        def one(run: _RunFiles) -> tuple[_RunFiles, dict[str, int] | None, str | None]:
            bucket, prefix = split_url(run.url)
            try:
                return run, {obj["Key"][len(prefix):]: int(obj.get("Size") or 0)
                             for obj in list_keys(self.client, bucket, prefix)}, None
            except StoreError as e:
                return run, None, str(e)

        with ThreadPoolExecutor(self.workers) as pool:
            for run, listed, error in pool.map(one, [r for r in runs if r.archived is None]):
                if error is not None:
                    run.error = error
                else:
                    run.archived = listed
                    run._add_records(self.writer.out)


def _get(client, url: str) -> bytes | None:
    bucket, key = split_url(url)
    got = get_object(client, bucket, key)
    return got[0] if got else None


def _load_json(data: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(data) if data else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _render_run(cat: IndexLocation, env, run: _RunFiles, selection: Mapping[str, str], out: Path) -> dict[str, bytes]:
    """The run's page and its data.js, from its index record and the files copied into the site."""
    indexed, url, run_id = run.record, run.url, run.record["run_id"]
    archived = run.archived or {}
    copied = run.copied

    def read(rel: str) -> bytes | None:
        if rel not in copied:
            return None
        return run.data[rel] if rel in run.data else (out / run.site_rel(rel)).read_bytes()

    record = _load_json(read(RUN_JSON))
    sections = pages.image_sections(r for r in archived if pages.safe_rel(r))
    csv_path = out / run.site_rel(RESULTS_CSV)
    csv_bytes = read(RESULTS_CSV)
    csv_text = csv_bytes.decode("utf-8", errors="replace") if csv_bytes is not None else ""
    cols = pages.parse_results_csv(csv_text)
    args = yaml_mapping(read(ARGS_YAML))
    column = pages.fitness_column(indexed, list(cols), selection, record)
    best = read_metrics(csv_path, column) if csv_text.strip() else None
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
        images_deferred=run.images_deferred, details_pending=run.details_pending,
        hparams=indexed.get("hparams") if isinstance(indexed.get("hparams"), Mapping) else {},
        attempts=attempts, timeline=pages.timeline_chart(attempts),
        config=pages.yaml_text(record["config"]) + "\n" if record.get("config") else "",
        commands={"fetch": f"slurm-yolo runs fetch {run_id} --to ./{run_id}",
                  "reproduce": f"slurm-yolo reproduce {run_id}",
                  "show": f"slurm-yolo runs show {run_id}"})
    run_data = {"run_id": run_id, "project": indexed.get("project"), "task": indexed.get("task"),
                "end_state": indexed.get("end_state"), "epochs_done": indexed.get("epochs_done"),
                "fitness_metric": metrics.field, "fitness_column": metrics.column, "fitness": metrics.value,
                # A list, not a mapping: the table keeps results.csv's column order (JSON keys are sorted).
                "metrics": [[f, v] for f, _, v in metrics.rows],
                "args": {k: v for k, v in args.items() if k not in PER_RUN_ARGS},
                "curves": pages.metric_curves(cols)}
    if run.details_pending:
        # What the compare view may say: this run's curves and parameters are not copied yet
        # (not "none"): a later build brings them.
        run_data["pending"] = True
    return {f"run/{run_id}.html": page.encode("utf-8"),
            f"run/{run_id}/data.js": ("window.portalRunData(" + pages.script_json(run_data) + ");\n").encode()}


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
        # libyaml's parser where PyYAML has it: the pure-Python one costs milliseconds per args.yaml.
        value = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if data else None
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
