"""Prometheus metrics of the archivers, in node_exporter's textfile format.

The node epilog, the controller path, the reconciler and the drain each end by recording what
they did here (:func:`record`); node_exporter's textfile collector serves the file (site key
``metrics_textfile``, default ``/var/lib/prometheus/node-exporter/slurm-yolo.prom``, the folder
of Debian's ``prometheus-node-exporter``). The series (docs/admin.md, "Metrics, dashboard and
alerts"; ``instance`` comes from the scrape, so each node's file says nothing about its name):

- ``slurm_yolo_archives_total{result, end_state}``: attempts archived by an epilog or the
  reconciler: ``archived`` (in the store), ``spooled`` (left to the drain), ``failed`` (an error
  in the archiver itself), ``refused`` (an untrusted marker or folder; ``end_state="none"``);
- ``slurm_yolo_drained_total{result, end_state}``: spool entries the drain tried: ``shipped``
  or ``failed``;
- ``slurm_yolo_spool_entries``, ``_spool_bytes`` (bytes their manifests list, still to upload),
  ``_spool_oldest_seconds``, ``_spool_needs_attention`` (entries whose last failure needs a
  person, or that cannot be read): gauges, read from the spool at every write;
- ``slurm_yolo_last_archive_timestamp_seconds``: when this node last put a run in the store;
- ``slurm_yolo_epilog_duration_seconds``: a histogram of the node and controller epilogs;
- ``slurm_yolo_bytes_uploaded_total``: what the archivers and the drain uploaded.

Counters must survive the process that counts (every epilog is a new one), so the totals are
kept in a small JSON state file beside the textfile (``<textfile>.state``, which the collector,
reading ``*.prom`` only, ignores). One write reads the state, adds the event, renders the text
and replaces both files, under an ``flock`` (``<textfile>.lock``): epilogs of jobs ending at
once on a node, and a drain, never lose each other's counts. Both files are 0644 whatever the
caller's umask (node_exporter runs as ``prometheus``) and hold counts and states only: no
path, user, run ID or credential. The text is rendered by ``prometheus_client`` (the
exposition format, escaping and histogram layout are its, not ours), imported only when a
write happens: a job that is not ours never gets here.

Building the text is pure (:func:`add`, :func:`render`); :func:`record` is the one writer.
A metrics failure is logged and never fails the archiver that called it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from slurm_yolo.archive.manifest import MANIFEST
from slurm_yolo.epilog.entry import EntryInfo
from slurm_yolo.epilog.spool import META, iter_entries
from slurm_yolo.timeparse import parse_time

log = logging.getLogger("slurm_yolo.epilog")

PREFIX = "slurm_yolo_"
STATE_SUFFIX, LOCK_SUFFIX = ".state", ".lock"
# Epilog durations: from the cheap end of a small run to the largest time budget allowed.
DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# What an archiver's outcome is called in slurm_yolo_archives_total{result}.
ARCHIVED, SPOOLED, FAILED, REFUSED = "archived", "spooled", "failed", "refused"
SHIPPED = "shipped"
NO_STATE = "none"


@dataclass(frozen=True)
class Event:
    """What one archiver run did, for the counters.

    Attributes:
        archives: ``(result, end_state)`` per attempt an epilog or the reconciler handled.
        drained: ``(result, end_state)`` per spool entry the drain tried.
        bytes_uploaded: bytes put in the store.
        duration_s: an epilog's wall time, observed in the histogram (``None``: not an epilog).
        archived_at: Unix time a run reached the store (``None``: none did).
    """

    archives: tuple[tuple[str, str], ...] = ()
    drained: tuple[tuple[str, str], ...] = ()
    bytes_uploaded: int = 0
    duration_s: float | None = None
    archived_at: float | None = None


@dataclass(frozen=True)
class SpoolGauges:
    """The spool as it stands (``oldest_s`` 0 when empty)."""

    entries: int = 0
    bytes: int = 0
    oldest_s: float = 0.0
    needs_attention: int = 0


@dataclass(frozen=True)
class State:
    """The totals kept across runs (the content of the state file)."""

    archives: Mapping[str, float] = field(default_factory=dict)  # "result|end_state" -> count
    drained: Mapping[str, float] = field(default_factory=dict)
    bytes_uploaded: float = 0.0
    buckets: tuple[float, ...] = tuple(0.0 for _ in DURATION_BUCKETS)  # per bucket, not cumulative
    overflow: float = 0.0  # observations above the last bucket
    duration_sum: float = 0.0
    last_archive: float | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> State:
        """The state as the file holds it; what does not fit (another version's shape) is dropped."""
        buckets = data.get("buckets")
        if not isinstance(buckets, list) or len(buckets) != len(DURATION_BUCKETS):
            buckets = [0.0] * len(DURATION_BUCKETS)
        last = data.get("last_archive")
        return cls(archives=_counts(data.get("archives")), drained=_counts(data.get("drained")),
                   bytes_uploaded=float(data.get("bytes_uploaded") or 0), buckets=tuple(float(b) for b in buckets),
                   overflow=float(data.get("overflow") or 0), duration_sum=float(data.get("duration_sum") or 0),
                   last_archive=float(last) if isinstance(last, (int, float)) else None)

    def to_json(self) -> dict[str, Any]:
        return {"archives": dict(self.archives), "drained": dict(self.drained), "bytes_uploaded": self.bytes_uploaded,
                "buckets": list(self.buckets), "overflow": self.overflow, "duration_sum": self.duration_sum,
                "last_archive": self.last_archive}


def _counts(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float)) and "|" in str(k)}


def _label(result: str, end_state: str | None) -> str:
    return f"{result}|{end_state or NO_STATE}"


def add(state: State, event: Event) -> State:
    """``state`` with ``event`` counted (pure)."""
    archives, drained = dict(state.archives), dict(state.drained)
    for result, end_state in event.archives:
        key = _label(result, end_state)
        archives[key] = archives.get(key, 0.0) + 1
    for result, end_state in event.drained:
        key = _label(result, end_state)
        drained[key] = drained.get(key, 0.0) + 1
    buckets, overflow, total = list(state.buckets), state.overflow, state.duration_sum
    if event.duration_s is not None:
        total += event.duration_s
        slot = next((i for i, le in enumerate(DURATION_BUCKETS) if event.duration_s <= le), None)
        if slot is None:
            overflow += 1
        else:
            buckets[slot] += 1
    last = state.last_archive
    if event.archived_at is not None:
        last = max(last or 0.0, event.archived_at)
    return State(archives, drained, state.bytes_uploaded + event.bytes_uploaded, tuple(buckets), overflow, total, last)


# Series present from the first write, at 0 until they happen: a rate or an alert over a
# failure that never happened yet has a series to work on (Prometheus' advice for labelled counters).
ALWAYS = {"archives": (_label(FAILED, None), _label(REFUSED, None)), "drained": (_label(FAILED, None),)}


def render(state: State, spool: SpoolGauges) -> str:
    """The textfile for ``state`` and ``spool``: ``# HELP``/``# TYPE`` and samples (pure)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    def counter(name: str, doc: str, counts: Mapping[str, float]) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + name, doc, labels=["result", "end_state"])
        for key, value in sorted({**dict.fromkeys(ALWAYS.get(name, ()), 0.0), **counts}.items()):
            family.add_metric(key.split("|", 1), value)
        return family

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(PREFIX + name, doc, value=value)

    cumulative, running = [], 0.0
    for le, count in zip(DURATION_BUCKETS, state.buckets):
        running += count
        cumulative.append((_le(le), running))
    cumulative.append(("+Inf", running + state.overflow))
    families: list[Any] = [
        counter("archives", "Attempts handled by an epilog or the reconciler, by outcome "
                            "(archived, spooled, failed, refused) and end state.", state.archives),
        counter("drained", "Spool entries the drain tried, by outcome (shipped, failed) and end state.", state.drained),
        CounterMetricFamily(PREFIX + "bytes_uploaded", "Bytes put in the store by the archivers and the drain.",
                            value=state.bytes_uploaded),
        gauge("spool_entries", "Runs waiting in this node's spool.", spool.entries),
        gauge("spool_bytes", "Bytes the spooled runs' manifests list (still to upload).", spool.bytes),
        gauge("spool_oldest_seconds", "Age of the oldest spool entry in seconds (0: empty spool).", spool.oldest_s),
        gauge("spool_needs_attention", "Spool entries that need a person (a permanent failure, or unreadable).",
              spool.needs_attention),
    ]
    histogram = HistogramMetricFamily(PREFIX + "epilog_duration_seconds", "Wall time of the node and "
                                      "controller epilogs of slurm-yolo jobs, in seconds.")
    histogram.add_metric([], cumulative, state.duration_sum)
    families.append(histogram)
    if state.last_archive is not None:
        families.append(gauge("last_archive_timestamp_seconds", "Unix time a run last reached the store from here.",
                              state.last_archive))

    class _Families:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families())
    return generate_latest(registry).decode()


def _le(bound: float) -> str:
    return str(float(bound))


def spool_gauges(spool_dir: str | os.PathLike[str], now: float | None = None) -> SpoolGauges:
    """Count the spool: entries, the bytes their manifests list, the oldest's age, those needing a person."""
    now = time.time() if now is None else now
    entries = size = attention = 0
    oldest: float | None = None
    for entry in iter_entries(spool_dir):
        entries += 1
        try:
            info = EntryInfo.load(entry)
            manifest = json.loads((entry / META / MANIFEST).read_text())
            size += sum(int(meta.get("size") or 0) for meta in (manifest.get("files") or {}).values())
        except (OSError, ValueError, TypeError, AttributeError):
            attention += 1  # the drain cannot read it either: a person must look
            continue
        attention += bool(info.permanent)
        created = parse_time(info.created)
        if created is not None:
            oldest = created.timestamp() if oldest is None else min(oldest, created.timestamp())
    return SpoolGauges(entries, size, max(0.0, now - oldest) if oldest is not None else 0.0, attention)


def read_state(path: Path) -> State:
    """The totals from ``<textfile>.state``; a missing or damaged one starts again from zero
    (Prometheus's ``rate`` and ``increase`` take a counter reset in their stride)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return State()
    except (OSError, ValueError) as e:
        log.warning("metrics state %s unreadable (%s): counting again from zero", path, e)
        return State()
    return State.from_json(data) if isinstance(data, dict) else State()


def _replace(path: Path, text: str) -> None:
    """Write ``path`` atomically (temp file in the same folder, then rename), mode 0644."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record(textfile: str | None, spool_dir: str | os.PathLike[str], event: Event = Event(),
           now: float | None = None) -> bool:
    """Count ``event`` and rewrite the textfile (and its state) under the lock.

    Args:
        textfile: the site's ``metrics_textfile``; ``None``: metrics are off, nothing happens.
        spool_dir: the spool whose gauges the file shows.
        event: what the caller did (an empty one refreshes the gauges only).
        now: the current Unix time (tests).

    Returns:
        Whether the file was written. Never raises: the caller is an archiver.
    """
    if not textfile:
        return False
    path = Path(textfile)
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        lock = os.open(f"{path}{LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state_path = Path(f"{path}{STATE_SUFFIX}")
            state = add(read_state(state_path), event)
            _replace(state_path, json.dumps(state.to_json(), sort_keys=True))
            _replace(path, render(state, spool_gauges(spool_dir, now)))
        finally:
            os.close(lock)
    except Exception as e:  # noqa: BLE001 - metrics never fail an archiver; say why in the log
        log.warning("metrics not written to %s: %s: %s", textfile, type(e).__name__, e)
        return False
    return True


def archive_outcome(result: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(result, end_state)`` of an archiver's summary (:class:`~slurm_yolo.epilog.archiver.ArchiveResult`
    as a dict, or a reconciler line with ``refused``/``error``); ``None`` when another archiver
    had the attempt (nothing was done here)."""
    if "refused" in result:
        return REFUSED, NO_STATE
    if "error" in result:
        return FAILED, NO_STATE
    if not result.get("claimed", True) or result.get("dry_run"):
        return None
    return (ARCHIVED if result.get("shipped") else SPOOLED), str(result.get("state") or NO_STATE)


def archives_event(results: Sequence[Mapping[str, Any]], *, duration_s: float | None = None,
                   now: float | None = None) -> Event:
    """The event of archiver summaries (an epilog's one, a reconciler round's several)."""
    outcomes = tuple(o for o in (archive_outcome(r) for r in results) if o is not None)
    shipped = any(o[0] == ARCHIVED for o in outcomes)
    return Event(archives=outcomes, bytes_uploaded=sum(int(r.get("bytes") or 0) for r in results),
                 duration_s=duration_s, archived_at=(time.time() if now is None else now) if shipped else None)


def drain_event(results: Sequence[Any], now: float | None = None) -> Event:
    """The event of a drain's :class:`~slurm_yolo.epilog.ship.ShipResult` list."""
    drained = tuple((SHIPPED if r.ok else FAILED, getattr(r, "end_state", "") or NO_STATE) for r in results)
    shipped = any(r.ok for r in results)
    return Event(drained=drained, bytes_uploaded=sum(int(getattr(r, "bytes", 0) or 0) for r in results if r.ok),
                 archived_at=(time.time() if now is None else now) if shipped else None)

