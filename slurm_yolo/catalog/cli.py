"""``slurm-yolo runs|reproduce|index|store``: the catalog's commands (thin: parse, call, print).

With ``--json`` every command prints exactly one JSON value on stdout; otherwise rich
tables for people. Warnings go to stderr.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime, timezone
from typing import Any, Sequence

import yaml
from rich.table import Table

from slurm_yolo.catalog import index, query, retention, runs, scan, usage
from slurm_yolo.errors import ConfigError, SlurmYoloError
from slurm_yolo.output import console, emit_json, print_record
from slurm_yolo.tasks import metric_field

# runs list's table: these around the metric columns (list_columns), which follow the runs' task.
LEAD_COLUMNS = ("run_id", "project", "model_name", "end_state", "end")
TAIL_COLUMNS = ("user", "hparams.lr0", "hparams.batch")
BOX_COLUMNS = ("map50_95", "map50")
# Several tasks in one list: each run's own metric, named.
MIXED_COLUMNS = ("fitness_metric", "fitness")
LIST_COLUMNS = LEAD_COLUMNS + BOX_COLUMNS + TAIL_COLUMNS

# A sort spec such as "-map50_95" or "-map50_95,run_id": a value, although it starts with "-".
_SORT_SPEC_RE = re.compile(r"-[a-z][a-z0-9_.]*(,-?[a-z][a-z0-9_.]*)*")


class _Parser(argparse.ArgumentParser):
    """Reads ``--sort -map50_95`` as ``--sort=-map50_95``.

    argparse takes any word starting with ``-`` for an option (and ``-hparams.lr0`` for
    ``-h``!); a leading ``-`` is how ``--sort`` spells "descending", so words that look like
    sort specs and are not registered options are values here.
    """
    def _parse_optional(self, arg_string):
        if _SORT_SPEC_RE.fullmatch(arg_string) and arg_string not in self._option_string_actions:
            return None
        return super()._parse_optional(arg_string)


def add_commands(sub: Any) -> None:
    """Register the catalog commands on the ``slurm-yolo`` subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--index", metavar="URL",
                        help="index URL s3://BUCKET/PREFIX/ (default: $SLURM_YOLO_INDEX, else the site config)")
    common.add_argument("--json", action="store_true", help="print one JSON value (for scripts)")
    _add_runs(sub, common)
    _add_reproduce(sub, common)
    _add_index(sub, common)
    _add_store(sub, common)


def _add_runs(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("runs", help="find, show, compare and fetch archived runs")
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION", required=True, parser_class=_Parser)

    p = rsub.add_parser("list", parents=[common], help="list runs matching filters",
                        description="List runs from the store's index. Filters are ANDed.")
    p.add_argument("--project")
    p.add_argument("--task")
    p.add_argument("--sweep", metavar="SWEEP_ID")
    p.add_argument("--state", metavar="END_STATE", help="e.g. COMPLETED, FAILED, OUT_OF_MEMORY, TIMEOUT")
    p.add_argument("--user")
    p.add_argument("--since", metavar="AGE_OR_DATE", help="submitted since: 90d, 12h, 2w or 2026-08-01")
    p.add_argument("--where", action="append", default=[], metavar="EXPR",
                   help="FIELD OP VALUE, e.g. 'map50_95>0.85' or 'hparams.lr0==0.01' (repeatable, ANDed)")
    p.add_argument("--sort", default="-submitted_at", metavar="FIELDS",
                   help="comma-separated fields, '-' for descending (default: -submitted_at); missing values last")
    p.add_argument("--limit", type=int, metavar="N")
    p.set_defaults(func=cmd_list)

    p = rsub.add_parser("show", parents=[common], help="a run's record, config, attempts and archive URL")
    p.add_argument("run_id", metavar="RUN_ID")
    p.set_defaults(func=cmd_show)

    p = rsub.add_parser("compare", parents=[common], help="differing hyper-parameters and metrics side by side")
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    p.add_argument("--keys", help="compare exactly these args.yaml keys, e.g. lr0,batch (default: all that differ)")
    p.add_argument("--metric", metavar="FIELD",
                   help="the metric to plot per epoch, e.g. top1 or map50_95_mask (default: the runs' task metric)")
    p.add_argument("--plot", metavar="PNG", help="write the metric per epoch of every run to this PNG")
    p.set_defaults(func=cmd_compare)

    p = rsub.add_parser("fetch", parents=[common], help="download a run's bundle and verify it against its manifest")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--to", required=True, metavar="DIR")
    p.set_defaults(func=cmd_fetch)


def _add_reproduce(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("reproduce", parents=[common], help="resubmit an archived run's config as a new run",
                       description="Resubmit the archived resolved config of a run (with --set changes) as a new "
                                   "run recording which run it reproduces; warns about code/environment changes.")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--executor", choices=["slurm", "local"], default="slurm")
    p.add_argument("--dry-run", action="store_true", help="resolve and warn; submit nothing")
    p.set_defaults(func=cmd_reproduce)


def _add_index(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("index", help="maintain the store's run index (quarterly Parquet files + pending updates)",
                       description="The index: runs/<run_id>.json per run, pending/ updates the epilogs write, and "
                                   "parquet/quarter=YYYY-Qn/runs.parquet files that compaction folds them into "
                                   "(DuckDB, Polars, Spark and Athena read those as they are: docs/admin.md).")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    p = isub.add_parser("rebuild", parents=[common], help="recreate the index from every run.json in the store")
    p.add_argument("--root", action="append", default=[], metavar="S3_URL",
                   help="where archived runs are (repeatable; default: the index's bucket)")
    p.add_argument("--force", action="store_true",
                   help="drop runs the index lists now whose run.json is not under the roots (refused otherwise)")
    p.set_defaults(func=cmd_rebuild)
    p = isub.add_parser("compact", parents=[common],
                        help="fold pending index updates into the quarterly Parquet files (the drain timer also does)")
    p.set_defaults(func=cmd_compact)
    p = isub.add_parser("migrate", parents=[common],
                        help="convert the old single INDEX.jsonl into quarterly Parquet files (once, after upgrading "
                             "every node; idempotent)")
    p.set_defaults(func=cmd_migrate)


def _add_store(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("store", help="keep the store affordable: usage and cost, lifecycle rules, pruning")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    p = ssub.add_parser("usage", parents=[common], help="runs, objects, bytes, GPU- and CPU-hours per project, user or task",
                        description="What the store holds per group (the index's sizes: every object under each run, "
                                    "run.json and the manifest included) and what the runs used (nodes x GPUs/CPUs x "
                                    "wall time of every attempt); with storage_cost_per_gb_month in the site config, "
                                    "an estimated monthly cost per storage class.")
    p.add_argument("--by", choices=usage.GROUPINGS, default="project", help="group by (default: project)")
    p.add_argument("--since", metavar="AGE_OR_DATE", help="runs submitted since: 90d, 12h, 2w or 2026-08-01")
    p.set_defaults(func=cmd_usage)
    p = ssub.add_parser("lifecycle", parents=[common], help="show or apply the bucket lifecycle rule for runs")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--apply", action="store_true")
    mode.add_argument("--show", action="store_true")
    p.add_argument("--bucket", help="default: the index's bucket")
    p.add_argument("--prefix", default="", help="key prefix of archived runs (must not contain the index)")
    p.add_argument("--ia-after", default="30d", metavar="DAYS",
                   help="to STANDARD_IA after (default 30d); none: no transition (stores without storage classes)")
    end = p.add_mutually_exclusive_group()
    end.add_argument("--expire-after", metavar="DAYS", help="delete after, e.g. 180d")
    end.add_argument("--archive-after", metavar="DAYS", help="to GLACIER after, e.g. 180d")
    p.set_defaults(func=cmd_lifecycle)

    p = ssub.add_parser("prune", parents=[common], help="delete old runs except the best of each group",
                        description="Among runs older than --older-than, keep the top runs by --metric per "
                                    "(task, project, model) — or per --project — and delete the rest.")
    p.add_argument("--keep-top", required=True, metavar="N_OR_PCT",
                   help="per group: a count (10; idempotent, for cron) or a share of the old runs present now "
                        "(10%%, rounded up)")
    p.add_argument("--metric", metavar="FIELD",
                   help="rank by this field, e.g. map50_95 or metrics.top5 (default: each run's task metric, "
                        "the fitness column: top1 for classify, mask mAP50-95 for segment)")
    p.add_argument("--older-than", required=True, metavar="AGE_OR_DATE", help="e.g. 180d or 2026-01-01")
    p.add_argument("--project")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    p.set_defaults(func=cmd_prune)


def _print_json(obj: Any) -> None:
    emit_json(obj)


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"slurm-yolo: warning: {line}", file=sys.stderr)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(title: str | None, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:


    t = Table(*headers, title=title, box=None, padding=(0, 1), title_justify="left")
    for row in rows:
        t.add_row(*[_fmt(v) for v in row])
    console().print(t)


def build_query(args: argparse.Namespace, now: datetime | None = None) -> query.Query:
    """A :class:`~slurm_yolo.catalog.query.Query` from ``runs list`` arguments (validates them all)."""
    now = now or datetime.now(timezone.utc)
    if args.limit is not None and args.limit < 0:

        raise ConfigError(f"--limit {args.limit}: must be 0 or more")
    return query.Query(project=args.project, task=args.task, sweep=args.sweep, state=args.state, user=args.user,
                       since=query.parse_since(args.since, now) if args.since else None,
                       where=tuple(query.parse_where(w) for w in args.where), sort=query.parse_sort(args.sort),
                       limit=args.limit)


def cmd_list(args: argparse.Namespace) -> int:
    q = build_query(args)  # before any store access: a typo fails fast
    cat = index.locate(args.index)
    found = scan.select(cat, q)
    if args.json:
        _print_json(found)
        return 0
    columns = list_columns(found)
    _table(None, [c.split(".", 1)[1] if "." in c else c for c in columns],
           [[query.field_value(record, c) for c in columns] for record in found])
    print(f"{len(found)} runs", file=sys.stderr)
    return 0


def list_columns(records: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """``runs list``'s columns: the listed runs' task metrics when they are all of one task,
    else each run's own (``fitness_metric``, ``fitness``). Detection keeps its two mAP columns."""
    tasks = {record.get("task") for record in records}
    columns = [str(record["fitness_metric"]) for record in records if record.get("fitness_metric")]
    if len(tasks) > 1:
        return LEAD_COLUMNS + MIXED_COLUMNS + TAIL_COLUMNS
    main_field = metric_field(max(set(columns), key=columns.count)) if columns else None
    if main_field in (None, "map50_95"):
        return LIST_COLUMNS
    fields: list[str] = []
    for record in records:
        fields += [f for f in record.get("metrics") or {} if f not in fields]
    partner = main_field.replace("map50_95", "map50", 1) if main_field.startswith("map50_95") else next(
        (f for f in fields if f != main_field and f not in BOX_COLUMNS), None)
    metric_columns = [f"metrics.{main_field}"] + ([f"metrics.{partner}"] if partner in fields else [])
    if main_field.startswith("map50_95_"):  # a mask or pose set: the box mAP beside it
        metric_columns.append("map50_95")
    return LEAD_COLUMNS + tuple(metric_columns) + TAIL_COLUMNS


def cmd_show(args: argparse.Namespace) -> int:
    cat = index.locate(args.index)
    record = runs.run_record(cat, args.run_id)
    if args.json:
        _print_json(record)
        return 0


    print_record(record)
    print("config:\n" + yaml.safe_dump(record.get("config"), sort_keys=False).rstrip())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    cat = index.locate(args.index)
    keys = [k.strip() for k in (args.keys or "").split(",") if k.strip()]
    comparison = runs.compare(cat, args.run_ids, keys, metric=args.metric)
    out = comparison.to_dict()
    if args.plot:
        out["plot"] = str(runs.plot_curves(comparison, args.plot))
    if args.json:
        _print_json(out)
        return 0
    rows = [[k, *v] for k, v in comparison.hparams.items()] + [[m, *v] for m, v in comparison.metrics.items()]
    _table(None, ["", *comparison.run_ids], rows)
    if not comparison.hparams:
        print("no differing hyper-parameters in args.yaml", file=sys.stderr)
    if args.plot:
        print(f"plot: {out['plot']}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    result = runs.fetch(index.locate(args.index), args.run_id, args.to)
    if args.json:
        _print_json(result)
    else:
        print(f"{result['run_id']}: {result['files']} files, {result['bytes']} bytes verified in {result['dir']}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    result = runs.reproduce(index.locate(args.index), args.run_id, args.overrides, executor=args.executor,
                            submit=args.submit,
                            dry_run=args.dry_run)
    _warn(result.warnings)
    if args.json:
        _print_json(result.to_dict())
    elif result.handle is None:
        print(f"dry run: would resubmit {args.run_id} with {len(args.overrides)} override(s); nothing was submitted")
    else:
        h = result.handle
        print(f"run       {h['run_id']} (reproduces {args.run_id})\njob       {h['job_id']} ({h['executor']})\n"
              f"folder    {h['run_dir']}\narchive   {h['archive_url']}")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    cat = index.locate(args.index)
    n = index.rebuild(cat, args.root, force=args.force)
    if args.json:
        _print_json({"index_url": cat.index_url, "runs": n})
    else:
        print(f"{cat.index_url} rebuilt: {n} runs")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    cat = index.locate(args.index)
    _print_compaction(cat, index.compact(cat), args.json)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    cat = index.locate(args.index)
    lines, result = index.migrate(cat)
    if not args.json:
        print(f"{cat.index_url}INDEX.jsonl: {lines} runs moved into quarterly Parquet files" if lines
              else f"{cat.index_url}: no INDEX.jsonl left to migrate")
    _print_compaction(cat, result, args.json, {"migrated_runs": lines})
    return 0


def _print_compaction(cat: index.IndexLocation, result: Any, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if as_json:
        _print_json({"index_url": cat.index_url, **(extra or {}), "updates": result.updates,
                     "runs_changed": result.runs_changed, "quarters": list(result.quarters), "left_pending": result.left,
                     "refused": list(result.refused), "skipped": result.skipped, "lease": result.lease})
        return
    print(f"{cat.index_url}: {result.summary()}")


def cmd_lifecycle(args: argparse.Namespace) -> int:
    cat = index.locate(args.index)
    bucket = args.bucket or cat.bucket
    if args.apply:
        rule = retention.lifecycle_rule(
            args.prefix,
            ia_after=None if args.ia_after.strip().lower() == "none" else query.parse_days(args.ia_after, "--ia-after"),
            expire_after=query.parse_days(args.expire_after, "--expire-after") if args.expire_after else None,
            archive_after=query.parse_days(args.archive_after, "--archive-after") if args.archive_after else None)
        retention.check_rule_spares_index(bucket, rule, cat.index_url)
        rules = retention.apply_lifecycle(cat.store, bucket, rule)
    else:
        rules = retention.read_lifecycle(cat.store, bucket)
    if args.json:
        _print_json({"bucket": bucket, "rules": rules})
        return 0
    if not rules:
        print(f"s3://{bucket}: no lifecycle rules")
    _table(f"s3://{bucket} lifecycle rules" if rules else None, ["id", "status", "prefix", "transitions", "expire",
                                                                 "abort multipart"],
           [[r.get("ID"), r.get("Status"), (r.get("Filter") or {}).get("Prefix", r.get("Prefix", "")),
             ", ".join(f"{t['StorageClass']} after {t['Days']}d" for t in r.get("Transitions", [])),
             f"{r['Expiration']['Days']}d" if "Days" in r.get("Expiration", {}) else "",
             f"{r['AbortIncompleteMultipartUpload']['DaysAfterInitiation']}d"
             if "AbortIncompleteMultipartUpload" in r else ""] for r in rules])
    return 0


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def cmd_usage(args: argparse.Namespace) -> int:
    since = query.parse_since(args.since, datetime.now(timezone.utc)) if args.since else None
    cat = index.locate(args.index)
    records = index.load_records(cat, since=since)
    rows = usage.usage_table(records, by=args.by, since=since)
    rates = index.storage_rates()
    notes = []
    if rates:
        try:
            transitions = usage.lifecycle_transitions(retention.read_lifecycle(cat.store, cat.bucket))
        except SlurmYoloError as e:
            transitions = []
            notes.append(f"lifecycle rules of s3://{cat.bucket} unreadable ({e}): every run priced as STANDARD")
        cost = usage.monthly_cost(records, args.by, rates, transitions)
        for row in rows:
            row["cost_per_month"] = cost.get(row[args.by], 0.0)
    total = usage.totals(rows)
    if total["unsized"]:
        notes.append(f"{total['unsized']} of {total['runs']} runs were indexed before runs' sizes were recorded: "
                     "their objects and bytes are not counted (`slurm-yolo index rebuild` records them)")
    if total["unmetered"]:
        notes.append(f"{total['unmetered']} runs have no attempt with both a start and an end (or were indexed "
                     "before hours were recorded): their GPU- and CPU-hours are not counted")
    if args.json:
        _print_json({"by": args.by, "since": since.isoformat() if since else None, "groups": rows, "total": total,
                     "notes": notes})
        return 0
    headers = [args.by, "runs", "objects", "bytes", "GPU-hours", "CPU-hours"] + (["$/month"] if rates else [])
    table = [[row[args.by], row["runs"], row["objects"], _human(row["bytes"]), f"{row['gpu_hours']:.1f}",
              f"{row['cpu_hours']:.1f}"] + ([f"{row['cost_per_month']:.2f}"] if rates else []) for row in rows]
    table.append(["total", total["runs"], total["objects"], _human(total["bytes"]), f"{total['gpu_hours']:.1f}",
                  f"{total['cpu_hours']:.1f}"] + ([f"{sum(r['cost_per_month'] for r in rows):.2f}"] if rates else []))
    _table(f"{cat.index_url}: usage by {args.by}" + (f" since {since:%Y-%m-%d %H:%M}" if since else ""), headers, table)
    _warn(notes)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    if args.metric:
        query.check_field(args.metric)
    keep = retention.parse_keep(args.keep_top)
    cutoff = query.parse_since(args.older_than, datetime.now(timezone.utc), "--older-than")
    cat = index.locate(args.index)
    plan = retention.plan_prune(index.load_records(cat), metric=args.metric, keep_top=keep, older_than=cutoff,
                                project=args.project)
    out = plan.to_dict()
    out["bytes"], out["unsized"] = retention.freed_bytes(plan)
    frees = f"{'would free' if args.dry_run else 'frees'} {_human(out['bytes'])}" + (
        f" (and {out['unsized']} runs indexed before sizes were recorded)" if out["unsized"] else "")
    if not args.json:
        verb = "would delete" if args.dry_run else "deleting"
        _table(f"{verb} {len(plan.delete)} runs, keeping {len(plan.keep)} (older than {cutoff:%Y-%m-%d}); {frees}",
               ["run_id", "project", "model_name", plan.metric, "archive_url"],
               [[record["run_id"], record["project"], record["model_name"], record[plan.metric], record["archive_url"]]
                for record in out["delete"]])
    if not args.dry_run:
        out["deleted"] = retention.execute_prune(cat, plan)
    out["dry_run"] = args.dry_run
    if args.json:
        _print_json(out)
    elif not args.dry_run:
        print(f"deleted {out['deleted']} runs")
    return 0
