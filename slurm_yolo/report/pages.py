"""Page data for the portal, pure: index records, run records and archived files in; dicts,
inline SVG and script-safe JSON out. No I/O, no store (see :mod:`slurm_yolo.report.build`).

Everything that comes from a run (names, args, file names, CSV headers) is user-controlled:
SVG is built with :func:`markupsafe.escape` on every text, and JSON meant for a ``<script>``
goes through :func:`script_json`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import posixpath
import re
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

from markupsafe import Markup, escape

from slurm_yolo.archive.layout import is_under, user_prefix
from slurm_yolo.names import NAME_RE
from slurm_yolo.record import BOX_FIELDS, choose_fitness_metric, fitness_candidates, fitness_of, metric_values
from slurm_yolo.tasks import LOWER_IS_BETTER, metric_field
from slurm_yolo.timeparse import parse_time

# The box set (top-level columns of every index record) in display order: the runs table shows
# them when no task is picked, as before each task had its own metrics.
BOX_DISPLAY = ("map50_95", "map50", "precision", "recall")
assert set(BOX_DISPLAY) == set(BOX_FIELDS)
# Index-record fields shown in (and filterable from) the runs table, in column order.
TABLE_FIELDS = ("run_id", "project", "model_name", "task", "end_state", "user", "submitted_at", "attempts",
                "sweep_id", "epochs_done") + BOX_DISPLAY
# Images worth showing on a run page, by Ultralytics' file names: (section, pattern). The
# curves are each task's: Box*/Mask*/Pose* for detect, segment and pose, plain for older runs.
IMAGE_SECTIONS = (
    ("samples", re.compile(r"(train_batch\d*|labels(_correlogram)?)\.(jpg|png)$")),
    ("predictions", re.compile(r"val_batch\d+_(pred|labels|calibrated)\.(jpg|png)$")),
    ("curves", re.compile(r"(Box|Mask|Pose)?(F1|PR|P|R)_curve\.png$")),
    ("confusion", re.compile(r"confusion_matrix[^/]*\.png$")),
    ("plots", re.compile(r"[^/]+\.png$")),
)
# A copied image larger than this is linked, not embedded (a portal of 10,000 runs stays small).
MAX_IMAGE_BYTES = 8 * 1024 * 1024
# Images shown per section; the rest are in the file list (a run may archive thousands).
MAX_IMAGES_PER_SECTION = 24
# Chart colours (colour-blind friendly, Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
_JS_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(obj: Any) -> str:
    """JSON that is safe inside an HTML ``<script>`` element and as a JS literal.

    ``<``, ``>`` and ``&`` become ``\\u003c``-style escapes, so no value can close the
    script element (``</script>``) or open a comment (``<!--``); U+2028/9 are escaped for
    old JS parsers. NaN and infinities become ``null`` (not JSON).
    """
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=True, default=str)
    if "NaN" in text or "Infinity" in text:
        # A non-finite float was written (or a string holds those letters): the slow path, which
        # walks every value. Most pages have none, and the walk costs ~0.3 us a value.
        text = json.dumps(_finite(obj), sort_keys=True, ensure_ascii=False, allow_nan=False, default=str)
    return re.sub("[<>&\u2028\u2029]", lambda m: _JS_ESCAPES[m.group(0)], text)


# A string YAML reads back as that string when written bare: a letter, '/' or '_' first (no
# number, date, '.inf' or '~'), no space, colon, '#' or quote, and none of YAML 1.1's words.
_YAML_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./@+-]*")
_YAML_WORDS = frozenset("y n yes no on off true false null".split())


def yaml_text(value: Any, indent: int = 0) -> str:
    """``value`` (JSON-like: dicts, lists, scalars) as block-style YAML, keys in their order.

    What ``yaml.safe_dump(value, sort_keys=False)`` shows, without PyYAML's representer, which
    costs ~1 ms per run config (a tenth of a first build's rendering over 10,000 runs). Strings
    that are not plainly safe are double-quoted JSON strings, which YAML reads alike.
    """
    pad = " " * indent
    if isinstance(value, dict) and value:
        lines = []
        for k, v in value.items():
            head = f"{pad}{_yaml_scalar(str(k))}:"
            # A list under a key at the key's own indent, as PyYAML writes it.
            inner = indent if isinstance(v, (list, tuple)) else indent + 2
            lines.append(head + ("\n" + yaml_text(v, inner) if _yaml_block(v) else " " + _yaml_scalar(v)))
        return "\n".join(lines)
    if isinstance(value, (list, tuple)) and value:
        lines = []
        for v in value:
            if _yaml_block(v):
                block = yaml_text(v, indent + 2)
                lines.append(f"{pad}- " + block[indent + 2:])
            else:
                lines.append(f"{pad}- {_yaml_scalar(v)}")
        return "\n".join(lines)
    return pad + _yaml_scalar(value)


# dict, not typing.Mapping: isinstance against the typing alias costs ~4 us a call, a config ~50 calls.
def _yaml_block(v: Any) -> bool:
    return isinstance(v, (dict, list, tuple)) and bool(v)


def _yaml_scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return ".nan" if v != v else (".inf" if v > 0 else "-.inf")
        text = repr(v)
        # YAML 1.1 reads "1e-300" as a string: its floats need a dot (as PyYAML writes them).
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, (list, tuple)):
        return "[]"
    text = str(v)
    if _YAML_PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text, ensure_ascii=False).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def record_digest(record: Mapping[str, Any]) -> str:
    """A short digest of an index record: a run page is rebuilt only when this changes."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:20]


def linkable(record: Mapping[str, Any], allowed_prefix: str | None) -> str | None:
    """Why a run must not get a page or links (``None``: it may).

    A run page shows files read from ``archive_url``, and its name is the run's user's. A
    record whose ``archive_url`` points outside that user's allowed prefix (site config
    ``allowed_prefix``, ``{user}`` replaced) could show someone else's files under its name,
    so it is listed but not linked. Run IDs and users must be safe names: they become file
    names and URL paths of the site.
    """
    run_id, user, url = record.get("run_id"), record.get("user"), record.get("archive_url")
    if not isinstance(run_id, str) or not NAME_RE.fullmatch(run_id):
        return "run ID is not a safe name"
    if not isinstance(url, str) or not url.startswith("s3://") or not url.endswith(f"/{run_id}/"):
        return "archive_url is not the run's own folder"
    if ".." in url.split("/"):
        return "archive_url contains '..'"
    if allowed_prefix:
        if not isinstance(user, str) or not NAME_RE.fullmatch(user):
            return "user is not a safe name"
        prefix = user_prefix(allowed_prefix, user)
        if not is_under(url, prefix):
            return f"archive_url is outside {prefix}"
    return None


def safe_rel(rel: Any) -> str | None:
    """An archived file's relative path if it is safe as a path inside the site, else ``None``."""
    if not isinstance(rel, str) or not rel or len(rel) > 512 or rel.startswith("/") or "\\" in rel:
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") or any(ord(c) < 32 for c in p) for p in parts):
        return None
    return posixpath.normpath(rel)


def image_sections(files: Iterable[str]) -> dict[str, list[str]]:
    """Archived image names by page section (each image in its first matching section; at most
    :data:`MAX_IMAGES_PER_SECTION` each, in name order)."""
    out: dict[str, list[str]] = {name: [] for name, _ in IMAGE_SECTIONS}
    for rel in sorted(files):
        for name, pattern in IMAGE_SECTIONS:
            if pattern.search(rel):
                if len(out[name]) < MAX_IMAGES_PER_SECTION:
                    out[name].append(rel)
                break
    return out


# ---------------------------------------------------------------------------- results.csv

def parse_results_csv(text: str) -> dict[str, list[float | None]]:
    """``results.csv`` as ``{column: [value per row]}``; headers stripped, non-numbers ``None``.

    Ultralytics pads its headers with spaces; a torn last line (a run killed mid-write) just
    gives a shorter or ``None``-filled row.
    """
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return {}
    cols: dict[str, list[float | None]] = {h: [] for h in header if h}
    for row in reader:
        if not row:
            continue
        for i, h in enumerate(header):
            if h:
                cols[h].append(_number(row[i] if i < len(row) else None))
    return cols


def _number(text: str | None) -> float | None:
    try:
        value = float(text.strip()) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def curve_groups(cols: Mapping[str, Sequence[float | None]], fitness_metric: str | None = None
                 ) -> list[tuple[str, dict[str, list[tuple[float, float]]]]]:
    """Columns of a parsed ``results.csv`` grouped into charts: ``[(title, {column: points})]``.

    Whatever columns the run logged are drawn (a yolo26 run logs ``l1_loss`` where others log
    ``dfl_loss``, a classify run ``train/loss``): metric columns by kind and set (``mAP (mask)``,
    ``errors (lower is better)``), then train losses, val losses, learning rates, the rest. The
    chart holding ``fitness_metric`` (the run's selection column) comes first. Points are
    ``(epoch, value)``; rows without an epoch or value are left out.
    """
    epochs = cols.get("epoch") or list(range(1, 1 + max((len(v) for v in cols.values()), default=0)))
    groups: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, values in cols.items():
        if name == "epoch" or name == "time":
            continue
        title = _group_title(name)
        points = [(e, v) for e, v in zip(epochs, values) if e is not None and v is not None]
        if points:
            groups.setdefault(title, {})[name] = points
    tail = ["train losses", "val losses", "learning rate", "other"]
    first = _group_title(fitness_metric) if fitness_metric else None

    def rank(title: str) -> int:
        if title == first:
            return -1
        # Metric charts before the losses, in their columns' order (sorted() is stable).
        return 1 + tail.index(title) if title in tail else 0

    return sorted(groups.items(), key=lambda kv: rank(kv[0]))


# Ultralytics' metric sets, by the suffix of a metrics/ column.
_SET_NAMES = {"B": "box", "M": "mask", "P": "pose"}


def _group_title(column: str) -> str:
    low = column.lower()
    field = metric_field(column)
    if field is not None:
        suffix = re.search(r"\(([A-Za-z0-9]+)\)$", column.strip())
        kind = ("mAP" if "map" in low else "precision / recall" if "precision" in low or "recall" in low
                else "accuracy" if "accuracy" in low
                else "errors (lower is better)" if field in LOWER_IS_BETTER else "metrics")
        return f"{kind} ({_SET_NAMES.get(suffix[1], suffix[1])})" if suffix else kind
    if low.startswith("train/"):
        return "train losses"
    if low.startswith("val/"):
        return "val losses"
    if low.startswith("lr/"):
        return "learning rate"
    return "other"


def metric_curves(cols: Mapping[str, Sequence[float | None]]) -> dict[str, list[list[float]]]:
    """Every ``metrics/`` column as ``{column: [[epoch, value], ...]}`` (what the compare view overlays)."""
    return {k: [list(p) for p in v] for _, g in curve_groups(cols) for k, v in g.items()
            if metric_field(k) is not None}


# ---------------------------------------------------------------------------- task metrics

@dataclasses.dataclass(frozen=True)
class TaskMetrics:
    """What a run page shows in its metric table.

    Attributes:
        column: the ``results.csv`` column the run is ranked by (``metrics/accuracy_top1``).
        field: its stable field name (``top1``), ``None`` if unknown.
        value: the run's value of it (``None``: no epoch validated yet).
        best_epoch: the epoch that value comes from, when known.
        rows: ``(field, column or None, value)`` for every metric of the run, in
            ``results.csv``'s column order.
    """

    column: str | None
    field: str | None
    value: float | None
    best_epoch: int | None
    rows: tuple[tuple[str, str | None, float | None], ...]


def record_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metric fields of an index record, ``{field: value}``: its ``metrics`` map,
    and the top-level box fields where the map lacks them."""
    out = metric_values(record.get("metrics"))
    for key in BOX_FIELDS:
        if key not in out and _is_num(record.get(key)):
            out[key] = float(record[key])
    return out


def fitness(record: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """``(field, value)`` an index record is ranked by: its task's metric at the best epoch
    (:func:`slurm_yolo.record.fitness_of`: a record without ``fitness_metric`` of a detect or
    obb run is ranked by box mAP50-95, of another task not at all)."""
    got = fitness_of(record.get("task"), record)
    column = got["fitness_metric"]
    return (metric_field(column) if column else None), got["fitness"]


def task_metrics(indexed: Mapping[str, Any], cols: Mapping[str, Sequence[float | None]],
                 best: Mapping[str, Any] | None = None) -> TaskMetrics:
    """The metric table of a run page: the task's metrics of the best epoch.

    Args:
        indexed: the run's index record (the epilog chose the best epoch).
        cols: the parsed ``results.csv`` (its columns give the table its order).
        best: :func:`slurm_yolo.record.read_metrics` of the archived ``results.csv``; fills
            what the index record lacks (a run the index has not caught up with).
    """
    best = best or {}
    values = {**metric_values(best), **record_metrics(indexed)}
    rows: list[tuple[str, str | None, float | None]] = []
    for name in cols:
        field = metric_field(name)
        if field is not None and field not in {f for f, _, _ in rows}:
            rows.append((field, name, values.get(field)))
    seen = {f for f, _, _ in rows}
    rows += [(f, None, values[f]) for f in field_order(values) if f not in seen and values[f] is not None]
    field, value = fitness(indexed)
    column = indexed.get("fitness_metric") if isinstance(indexed.get("fitness_metric"), str) else None
    if value is None and isinstance(best.get("fitness_metric"), str):
        column, value = best["fitness_metric"], best.get("fitness")
        field = metric_field(column)
    if column is None and field is not None:
        column = next((c for f, c, _ in rows if f == field), None)
    raw = indexed.get("metrics")
    nested: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    epoch = next((v for v in (indexed.get("best_epoch"), nested.get("best_epoch"), best.get("best_epoch"))
                  if _is_num(v)), None)
    return TaskMetrics(column=column, field=field, value=value if _is_num(value) else None,
                       best_epoch=int(epoch) if epoch is not None else None, rows=tuple(rows))


def fitness_column(indexed: Mapping[str, Any], header: Sequence[str], selection: Mapping[str, str] | None = None,
                   run_record: Mapping[str, Any] | None = None) -> str | None:
    """The ``results.csv`` column a run's epochs are ranked by, chosen as the job and the epilog
    choose it (:func:`slurm_yolo.record.choose_fitness_metric`): the index record's, then its
    ``run.json``'s, then the installed Ultralytics' for the task (``selection``)."""
    candidates = [indexed.get("fitness_metric"), *fitness_candidates(run_record or {}),
                  (selection or {}).get(str(indexed.get("task")))]
    return choose_fitness_metric(list(header), candidates)


def field_order(fields: Iterable[str]) -> list[str]:
    """Metric fields in display order: the box set, mask set, pose set (each as
    :data:`BOX_DISPLAY`), then the rest by name (``top1``, ``top5``; ``miou``; ``delta1``...)."""

    def rank(field: str) -> tuple[int, int, str]:
        for i, suffix in enumerate(("", "_mask", "_pose")):
            base = field[:len(field) - len(suffix)] if suffix and field.endswith(suffix) else field
            if (not suffix or field.endswith(suffix)) and base in BOX_DISPLAY:
                return i, BOX_DISPLAY.index(base), ""
        return 3, 0, field

    return sorted(set(fields), key=rank)


def metric_fields_by_task(records: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """``{task: [metric field, ...]}`` over the records: the runs table's columns for a task."""
    by: dict[str, set[str]] = defaultdict(set)
    for record in records:
        by[str(record.get("task"))].update(record_metrics(record))
    return {task: field_order(fields) for task, fields in sorted(by.items())}


# ---------------------------------------------------------------------------- SVG charts

@dataclasses.dataclass(frozen=True)
class ChartBox:
    """Pixel geometry of a chart: total size and the plot area's margins."""

    width: int = 560
    height: int = 260
    left: int = 52
    right: int = 12
    top: int = 26
    bottom: int = 34


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def line_chart(title: str, series: Mapping[str, Sequence[tuple[float, float]]], box: ChartBox = ChartBox(),
               x_label: str = "epoch") -> Markup:
    """An inline SVG line chart: one ``<path class="curve">`` plus a ``<circle>`` per point, per series.

    Every label is escaped; coordinates are numbers we computed.
    """
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    if not xs:
        return Markup("")
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    # The legend gets its own band above the plot, so it never hides a curve.
    box = dataclasses.replace(box, top=box.top + 14 * len(series), height=box.height + 14 * len(series))
    pw, ph = box.width - box.left - box.right, box.height - box.top - box.bottom
    integer_x = all(float(x).is_integer() for x in xs)  # epochs: no tick at 2.5

    def sx(x: float) -> float:
        return box.left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return box.top + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg class="chart" role="img" viewBox="0 0 {box.width} {box.height}" width="{box.width}" '
           f'height="{box.height}" xmlns="http://www.w3.org/2000/svg">',
           f'<title>{escape(title)}</title>',
           f'<text class="chart-title" x="{box.left}" y="16">{escape(title)}</text>']
    for t in _ticks(y0, y1):
        y = sy(t)
        out.append(f'<line class="grid" x1="{box.left}" x2="{box.width - box.right}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{box.left - 4}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(x0, x1, 6):
        if integer_x and not float(t).is_integer():
            continue
        x = sx(t)
        out.append(f'<text class="tick" x="{x:.1f}" y="{box.height - box.bottom + 14}" '
                   f'text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<text class="axis-label" x="{box.left + pw / 2:.1f}" y="{box.height - 4}" '
               f'text-anchor="middle">{escape(x_label)}</text>')
    label = escape(x_label)
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        safe = escape(name)  # once per series: a page of 10,000 runs' worth of points adds up
        xy = [(sx(x), sy(y), x, y) for x, y in pts]
        d = " ".join(f"{'M' if j == 0 else 'L'}{px:.1f},{py:.1f}" for j, (px, py, _, _) in enumerate(xy))
        out.append(f'<path class="curve" data-series="{safe}" d="{d}" fill="none" stroke="{colour}" '
                   f'stroke-width="2"/>')
        out.extend(f'<circle class="point" cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}">'
                   f'<title>{safe} {label} {x:.4g}: {y:.4g}</title></circle>' for px, py, x, y in xy)
        out.append(f'<text class="legend" x="{box.left + 8}" y="{box.top - 14 * (len(series) - i) + 4}" '
                   f'fill="{colour}">{escape(name)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def bar_chart(title: str, bars: Sequence[tuple[str, int]], box: ChartBox = ChartBox(width=760, height=200)) -> Markup:
    """An inline SVG bar chart of ``(label, count)``; labels escaped, every ~8th label shown."""
    if not bars:
        return Markup("")
    top = max(c for _, c in bars) or 1
    pw, ph = box.width - box.left - box.right, box.height - box.top - box.bottom
    w = min(pw / len(bars), 40.0)  # a few days of runs: bars, not a wall
    every = max(1, math.ceil(len(bars) / 8))
    out = [f'<svg class="chart" role="img" viewBox="0 0 {box.width} {box.height}" width="{box.width}" '
           f'height="{box.height}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
           f'<text class="chart-title" x="{box.left}" y="16">{escape(title)}</text>']
    for t in _ticks(0, top, 4):
        y = box.top + ph - t / top * ph
        out.append(f'<line class="grid" x1="{box.left}" x2="{box.width - box.right}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{box.left - 4}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for i, (label, count) in enumerate(bars):
        h = count / top * ph
        x = box.left + i * w
        out.append(f'<rect class="bar" x="{x + 1:.1f}" y="{box.top + ph - h:.1f}" width="{max(1.0, w - 2):.1f}" '
                   f'height="{h:.1f}"><title>{escape(label)}: {count}</title></rect>')
        if i % every == 0:
            out.append(f'<text class="tick" x="{x + w / 2:.1f}" y="{box.height - box.bottom + 14}" '
                       f'text-anchor="middle">{escape(label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def timeline_chart(attempts: Sequence[Mapping[str, Any]], box: ChartBox = ChartBox(width=760, left=90)) -> Markup:
    """The attempts of a run as horizontal bars on a time axis, coloured by end state."""
    spans = []
    for a in attempts:
        start, end = parse_time(a.get("start")), parse_time(a.get("end"))
        if start is not None:
            spans.append((a, start, end or start))
    if not spans:
        return Markup("")
    t0, t1 = min(s for _, s, _ in spans), max(e for _, _, e in spans)
    total = max((t1 - t0).total_seconds(), 1.0)
    row = 26
    height = box.top + row * len(spans) + box.bottom
    pw = box.width - box.left - box.right
    out = [f'<svg class="chart timeline" role="img" viewBox="0 0 {box.width} {height}" width="{box.width}" '
           f'height="{height}" xmlns="http://www.w3.org/2000/svg"><title>attempts</title>',
           f'<text class="chart-title" x="{box.left}" y="16">attempts ({_duration(total)} in all)</text>']
    for i, (a, s, e) in enumerate(spans):
        x = box.left + (s - t0).total_seconds() / total * pw
        w = max(3.0, (e - s).total_seconds() / total * pw)
        y = box.top + i * row
        state = str(a.get("end_state") or a.get("status") or "?")
        signals = ",".join(str(sig.get("signal")) for sig in a.get("signals") or [] if isinstance(sig, dict))
        label = f"attempt {a.get('attempt')}: {state}" + (f" (signals {signals})" if signals else "")
        out.append(f'<text class="tick" x="{box.left - 6}" y="{y + 16}" text-anchor="end">'
                   f'#{escape(str(a.get("attempt")))}</text>'
                   f'<rect class="attempt state-{escape(_css_token(state))}" x="{x:.1f}" y="{y + 4}" '
                   f'width="{w:.1f}" height="{row - 8}"><title>{escape(label)}</title></rect>'
                   f'<text class="attempt-label" x="{min(x + 4, box.width - 150):.1f}" y="{y + 17}">'
                   f'{escape(label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _css_token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:40]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# ---------------------------------------------------------------------------- home page

def runs_over_time(records: Iterable[Mapping[str, Any]], now: datetime | None = None,
                   max_bars: int = 60) -> tuple[str, list[tuple[str, int]]]:
    """Runs submitted per day (per week when the span is long), as ``(unit, [(label, count)])``."""
    times = [t for t in (parse_time(record.get("submitted_at") or record.get("start")) for record in records)
             if t is not None]
    if not times:
        return "day", []
    first, last = min(times), max(times)
    unit, step = ("day", 1) if (last - first).days < max_bars else ("week", 7)
    start = first.date() - timedelta(days=first.weekday() if unit == "week" else 0)
    counts = Counter((t.date() - start).days // step for t in times)
    n = (last.date() - start).days // step + 1
    return unit, [((start + timedelta(days=i * step)).isoformat(), counts.get(i, 0)) for i in range(n)]


def project_summary(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per project and task: run count, states, last submission, and the best run by the task's
    metric (:func:`fitness`; a lower-is-better field ranks ascending).

    Per task, because one task's metric says nothing of another's: a classify run's top-1
    accuracy is not a better segmentation than a mask mAP of 0.5.
    """
    by: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        by[(str(record.get("project")), str(record.get("task")))].append(record)
    out = []
    for (project, task), xs in sorted(by.items()):
        scored: list[tuple[Mapping[str, Any], str | None, float]] = [
            (record, f, v) for record in xs for f, v in [fitness(record)] if v is not None]
        best = max(scored, key=lambda s: -s[2] if s[1] in LOWER_IS_BETTER else s[2], default=None)
        out.append({"project": project, "task": task, "runs": len(xs),
                    "states": dict(Counter(str(record.get("end_state")) for record in xs).most_common()),
                    "last": max((str(record.get("submitted_at") or "") for record in xs), default=""),
                    "best": best[0] if best else None, "best_field": best[1] if best else None,
                    "best_value": best[2] if best else None})
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def table_row(record: Mapping[str, Any], link: bool) -> dict[str, Any]:
    """One row of the runs table (the JSON the page's script filters and sorts): the record's
    fields, its task metric (``fitness_metric`` is the field's name) and its metric fields."""
    row = {k: record.get(k) for k in TABLE_FIELDS}
    row["fitness_metric"], row["fitness"] = fitness(record)
    row["metrics"] = record_metrics(record)
    row["hparams"] = {str(k): v for k, v in (record.get("hparams") or {}).items()
                      if isinstance(v, (str, int, float, bool)) or v is None}
    row["link"] = link
    return row


def now_utc() -> datetime:
    """The build time stamp shown in every page's footer."""
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------- usage page

def human_bytes(n: Any) -> str:
    """``1.5 GB``-style text of a byte count (decimal units, as storage is billed)."""
    if not _is_num(n):
        return ""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"  # pragma: no cover - the loop returns at TB


def bytes_over_time(records: Iterable[Mapping[str, Any]], max_points: int = 60
                    ) -> tuple[str, str, dict[str, list[tuple[float, float]]]]:
    """What each project keeps in the store over time: cumulative bytes of its runs by the day
    (the week, over a long span) each run ended (else was submitted). Runs without a size
    (indexed before sizes were recorded) are left out, as :func:`slurm_yolo.catalog.usage.usage_table`
    counts them apart.

    Returns:
        ``(unit, first day, {project: [(units since the first day, bytes)]})``; a point per
        unit from each project's first run on.
    """
    sized = [(t, str(record.get("project")), int(record["bytes"])) for record in records
             if _is_num(record.get("bytes"))
             for t in [parse_time(record.get("end") or record.get("submitted_at") or record.get("start"))]
             if t is not None]
    if not sized:
        return "day", "", {}
    first, last = min(t for t, _, _ in sized), max(t for t, _, _ in sized)
    unit, step = ("day", 1) if (last - first).days < max_points else ("week", 7)
    start = first.date() - timedelta(days=first.weekday() if unit == "week" else 0)
    n = (last.date() - start).days // step + 1
    added: dict[str, Counter] = defaultdict(Counter)
    for t, project, size in sized:
        added[project][(t.date() - start).days // step] += size
    out: dict[str, list[tuple[float, float]]] = {}
    for project in sorted(added):
        total, points = 0, []
        begin = min(added[project])
        for i in range(begin, n):
            total += added[project].get(i, 0)
            points.append((float(i), float(total)))
        out[project] = points
    return unit, start.isoformat(), out
