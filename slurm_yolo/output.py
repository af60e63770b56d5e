"""What the commands print: one place for every layer's command-line output.

People get rich tables and lines; scripts get ``--json``: exactly one JSON line per command
(:func:`emit_json`). The CLI of each room (launcher, epilog, catalog, report) prints through
here, so none of them borrows from another's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def console(**kwargs: Any):
    """A rich console; when stdout is not a terminal (a pipe, a log) rich would assume 80
    columns and cut table cells, so give it room instead."""
    from rich.console import Console

    stream = sys.stderr if kwargs.get("stderr") else sys.stdout
    return Console(width=None if stream.isatty() else 200, **kwargs)


def emit_json(obj: Any) -> None:
    """Print ``obj`` as exactly one JSON line (what ``--json`` promises scripts)."""
    print(json.dumps(obj, indent=None, sort_keys=True, default=str))


def print_record(record: dict[str, Any], run_dir: Path | str | None = None) -> None:
    """A person-readable view of a run record."""
    from rich.table import Table

    out = console()
    m = record.get("metrics") or {}
    state = record.get("end_state") or record.get("status")
    out.print(f"[bold]{record['run_id']}[/bold]  {record['task']}/{record['project']}/{record['model_name']}"
                  f"  [bold]{state}[/bold]")
    rows = [
        ("user", f"{record.get('user')} on {record.get('host')}"),
        ("submitted", record.get("submitted_at")),
        ("slurm job", (record.get("slurm") or {}).get("job_id")),
        ("folder", str(run_dir) if run_dir else None),
        ("archive", record.get("archive_url")),
        ("sweep", record.get("sweep_id")),
        ("code", _code_line(record.get("code"))),
        ("dataset", _dataset_line(record.get("dataset"))),
        ("ranked by", _fitness_line(record, m)),
        ("metrics", ", ".join(f"{k} {v:.4f}" for k, v in _metric_items(m)) or None),
    ]
    for k, v in rows:
        if v:
            out.print(f"  {k:<10} {v}")
    attempts = record.get("attempts") or []
    if attempts:
        t = Table("attempt", "node", "start", "end", "state", "epoch", "signals", box=None, padding=(0, 2))
        for a in attempts:
            t.add_row(str(a.get("attempt")), a.get("node") or "", a.get("start") or "", a.get("end") or "",
                      a.get("end_state") or a.get("status") or "", str(a.get("epoch") or ""),
                      ",".join(s["signal"] for s in a.get("signals") or []))
        out.print(t)


# What a metrics dict holds besides metric values (record.read_metrics).
_NOT_METRICS = frozenset({"epochs_done", "best_epoch", "epoch", "fitness_metric", "fitness"})


def _metric_items(m: dict[str, Any]) -> list[tuple[str, float]]:
    """Every metric value of the best epoch: the box set first (as detect always showed), then the task's own."""
    box = ("map50", "map50_95", "precision", "recall")
    keys = [k for k in box if k in m] + sorted(k for k in m if k not in box and k not in _NOT_METRICS)
    return [(k, m[k]) for k in keys if isinstance(m[k], (int, float)) and not isinstance(m[k], bool)]


def _fitness_line(record: dict[str, Any], m: dict[str, Any]) -> str | None:
    column = m.get("fitness_metric") or record.get("fitness_metric")
    if not column:
        return None
    value = m.get("fitness")
    shown = f" = {value:.4f}" if isinstance(value, (int, float)) else ""
    epoch = f" (best epoch {m['best_epoch']})" if m.get("best_epoch") is not None else ""
    return f"{column}{shown}{epoch}"


def _code_line(code: dict | None) -> str | None:
    return f"{code['commit'][:12]}{' (dirty)' if code.get('dirty') else ''} in {code['repo']}" if code else None


def _dataset_line(ds: dict | None) -> str | None:
    if not ds:
        return None
    return f"{ds.get('path')} version {ds.get('version') or '-'} {ds.get('fingerprint') or ''} ({ds.get('files')} files)"
