"""Filter and sort index records: the pure core of ``runs list`` (no I/O, no store).

An index record is the flat dict of :func:`slurm_yolo.archive.layout.index_record`. Field
names are its keys plus ``hparams.<name>`` for the recorded training arguments and
``metrics.<field>`` for the best epoch's metrics (``metrics.top1``, ``metrics.map50_95_mask``). A missing
or ``null`` field never satisfies a ``--where`` condition (as SQL's NULL), and sorts last
in both directions.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Sequence

from slurm_yolo.errors import ConfigError
from slurm_yolo.timeparse import parse_days, parse_since, parse_time  # noqa: F401 - callers use query.*

# Top-level fields of an index record (layout.index_record); ``hparams.*`` is open-ended.
FIELDS = (
    "run_id", "sweep_id", "task", "project", "model_name", "dataset_version", "dataset_fingerprint", "user",
    "gpu", "submitted_at", "start", "end", "attempts", "end_state", "job_id", "map50", "map50_95",
    "precision", "recall", "epochs_done", "fitness_metric", "fitness", "archive_url", "reproduces", "indexed_at",
    "bytes", "objects", "gpu_hours", "cpu_hours",
)
# Open-ended fields: ``hparams.<arg>`` (recorded training arguments) and ``metrics.<field>``
# (every metric of the best epoch, named by slurm_yolo.tasks.metric_field: metrics.top1).
NESTED = ("hparams.", "metrics.")
# Longest operators first so that ">=" is not read as ">" followed by "=...".
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt,
}
_WHERE_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(>=|<=|==|!=|>|<)\s*(.*?)\s*")
WHERE_HELP = ("expected FIELD OP VALUE with OP one of > >= < <= == !=, "
              "e.g. --where 'map50_95>0.85' or --where hparams.lr0==0.01")


@dataclass(frozen=True)
class Condition:
    """One ``--where`` condition: ``field op value``; numeric when ``value`` is a number."""

    field: str
    op: str
    value: float | str

    def matches(self, record: dict[str, Any]) -> bool:
        got = field_value(record, self.field)
        if got is None:
            return False
        compare = OPERATORS[self.op]
        if isinstance(self.value, float):
            if isinstance(got, bool) or not isinstance(got, (int, float)):
                return False
            return compare(got, self.value)
        return compare(str(got), self.value)


@dataclass(frozen=True)
class Query:
    """What ``runs list`` asks for. Empty/None fields do not filter.

    Attributes:
        project, task, sweep, state, user: exact matches on the index record.
        since: keep runs submitted at or after this time (UTC).
        where: conditions, all of which must hold.
        sort: field names, ``-`` prefix for descending; applied left to right as priorities.
        limit: at most this many records after sorting.
    """

    project: str | None = None
    task: str | None = None
    sweep: str | None = None
    state: str | None = None
    user: str | None = None
    since: datetime | None = None
    where: tuple[Condition, ...] = ()
    sort: tuple[str, ...] = ()
    limit: int | None = None
    _exact: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = (("project", self.project), ("task", self.task), ("sweep_id", self.sweep),
                 ("end_state", self.state), ("user", self.user))
        object.__setattr__(self, "_exact", tuple((k, v) for k, v in exact if v is not None))

    @property
    def exact(self) -> tuple[tuple[str, str], ...]:
        """The exact-match filters as ``(index field, value)`` pairs."""
        return self._exact

    def matches(self, record: dict[str, Any]) -> bool:
        if any(record.get(k) != v for k, v in self._exact):
            return False
        if self.since is not None:
            when = parse_time(record.get("submitted_at") or record.get("start"))
            if when is None or when < self.since:
                return False
        return all(c.matches(record) for c in self.where)


def field_value(record: dict[str, Any], name: str) -> Any:
    """``record[name]``, following dots into nested dicts (``hparams.lr0``); ``None`` if absent."""
    if "." not in name:
        return record.get(name)
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def check_field(name: str) -> str:
    """Return ``name`` if it is an index field (or ``hparams.X``, ``metrics.X``), else raise ConfigError."""
    if name in FIELDS or any(name.startswith(p) and len(name) > len(p) for p in NESTED):
        return name
    close = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.6)
    if not close and name.replace("-", "_") != name:
        close = [f"metrics.{name.replace('-', '_').lower()}"]
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(FIELDS)}, hparams.<name>, metrics.<field>"
    raise ConfigError(f"unknown field {name!r} ({hint})")


def parse_where(text: str) -> Condition:
    """Parse ``'map50_95>0.85'``, ``'hparams.lr0 == 0.01'``, ``"project!='pcb'"``.

    Raises:
        ConfigError: not ``FIELD OP VALUE``, or an unknown field; the message shows the fix.
    """
    m = _WHERE_RE.fullmatch(text)
    if not m or not m.group(3):
        raise ConfigError(f"--where {text!r}: {WHERE_HELP}")
    name, op, raw = m.groups()
    try:
        check_field(name)
    except ConfigError as e:
        raise ConfigError(f"--where {text!r}: {e}") from None
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return Condition(name, op, raw[1:-1])  # quoted: always a string, even '2'
    if raw[0] in "<>=!":  # 'map50_95>>0.5' would otherwise compare with the text '>0.5': no match, silently
        raise ConfigError(f"--where {text!r}: the value {raw!r} starts with an operator; {WHERE_HELP} "
                          f"(quote a text value that starts with one: {name}{op}'{raw}')")
    try:
        number = float(raw)
    except ValueError:
        return Condition(name, op, raw)
    if math.isnan(number):
        raise ConfigError(f"--where {text!r}: NaN cannot be compared; {WHERE_HELP}")
    return Condition(name, op, number)


def parse_sort(text: str | None) -> tuple[str, ...]:
    """``'-map50_95,run_id'`` → ``('-map50_95', 'run_id')``, fields checked."""
    if not text:
        return ()
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    for k in keys:
        try:
            check_field(k.lstrip("-"))
        except ConfigError as e:
            raise ConfigError(f"--sort {text!r}: {e}") from None
    return keys


def sort_records(records: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Sort by several keys (``-`` for descending); ``None`` and mixed types last, stably."""
    out = list(records)
    for key in reversed(keys):  # stable sorts from the least significant key
        name, descending = key.lstrip("-"), key.startswith("-")
        present = [record for record in out if _sortable(field_value(record, name))]
        absent = [record for record in out if not _sortable(field_value(record, name))]
        numeric = all(isinstance(field_value(record, name), (int, float)) for record in present)
        value = (lambda record: field_value(record, name)) if numeric else (lambda record: str(field_value(record, name)))
        out = sorted(present, key=value, reverse=descending) + absent
    return out


def _sortable(value: Any) -> bool:
    return value is not None and not isinstance(value, (dict, list))


def select(records: Iterable[dict[str, Any]], query: Query) -> list[dict[str, Any]]:
    """The records matching ``query``, sorted and limited."""
    out = sort_records([record for record in records if query.matches(record)], query.sort)
    return out if query.limit is None else out[: query.limit]
