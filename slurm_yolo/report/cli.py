"""``slurm-yolo report build|serve`` and ``slurm-yolo mlflow sync`` (thin: parse, call, print)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from slurm_yolo.catalog import index
from slurm_yolo.output import emit_json
from slurm_yolo.report import build, mlflow_sync
from slurm_yolo.report.serve import serve

DEFAULT_OUT = "portal"


def add_commands(sub) -> None:
    """Register ``report`` and ``mlflow`` on the ``slurm-yolo`` subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--index", metavar="URL",
                        help="index URL s3://BUCKET/PREFIX/ (default: $SLURM_YOLO_INDEX, else the site config)")
    common.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")

    p = sub.add_parser("report", help="the web portal: a static site built from the index and the archives")
    rsub = p.add_subparsers(dest="report_command", metavar="ACTION", required=True)
    p = rsub.add_parser("build", parents=[common], help="build (incrementally) the static portal, optionally publish it",
                        description="Write a self-contained static site (home, runs table, one page per run, "
                                    "compare view) from the index and the archives. Only runs whose index record "
                                    "changed are rebuilt.")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"site folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--publish", action="store_true",
                   help="upload what changed to --publish-url (default: s3://<index bucket>/portal/)")
    p.add_argument("--publish-url", metavar="S3_URL", help="where --publish puts the site")
    p.add_argument("--allowed-prefix", metavar="S3_URL",
                   help="link a run only if its archive is under this prefix ({user} = its user); "
                        "default: allowed_prefix of the site config")
    p.add_argument("--force", action="store_true", help="rebuild every run page")
    p.add_argument("--max-images", type=int, default=build.MAX_IMAGES, metavar="N",
                   help=f"images copied per build, newest runs first (default {build.MAX_IMAGES}; 0: none, "
                        "-1: all); the older runs' images come with the next builds")
    p.add_argument("--max-details", type=int, default=build.MAX_DETAILS, metavar="N",
                   help=f"runs whose curves, parameters and file list (results.csv, args.yaml, manifest) are "
                        f"copied per build, newest first (default {build.MAX_DETAILS}; 0: none, -1: all); every "
                        "changed run is paged at once from the index and its run.json, the older runs' pages "
                        "say what is pending and the next builds fill them in")
    p.add_argument("--fetch", choices=build.FETCHERS, default="presigned",
                   help="how archived files are downloaded (default presigned: GETs of presigned URLs from a "
                        "thread pool, the least CPU per object; s5cmd: one process per batch; boto3: get_object)")
    p.set_defaults(func=cmd_build)

    p = rsub.add_parser("serve", help="view a built portal in a browser (loopback only by default)")
    p.add_argument("--dir", default=DEFAULT_OUT, metavar="DIR", help=f"site folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--port", type=int, default=8088)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("mlflow", help="register archived runs in an MLflow tracking server (extra [mlflow])")
    msub = p.add_subparsers(dest="mlflow_command", metavar="ACTION", required=True)
    p = msub.add_parser("sync", parents=[common], help="register every archived run not yet (or changed) in MLflow",
                        description="Create one MLflow run per archived run in the server named by "
                                    "MLFLOW_TRACKING_URI: params from args.yaml, per-epoch metrics from results.csv, "
                                    "tags, and artifact_uri = the run's archive (nothing uploaded). Idempotent.")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI")
    p.add_argument("--experiment-prefix", default="", help="experiment name = PREFIX + project (default: the project)")
    p.add_argument("--allowed-prefix", metavar="S3_URL",
                   help="skip runs whose archive is outside this prefix ({user} = its user); "
                        "default: allowed_prefix of the site config")
    p.set_defaults(func=cmd_mlflow_sync)


def _emit(obj: Any) -> None:
    emit_json(obj)


def cmd_build(args: argparse.Namespace) -> int:
    cat = index.locate(args.index)
    allowed = args.allowed_prefix or build.site_allowed_prefix()
    result = build.build_site(cat, args.out, allowed_prefix=allowed, force=args.force, fetch=args.fetch,
                              max_images=None if args.max_images < 0 else args.max_images,
                              max_details=None if args.max_details < 0 else args.max_details)
    out = result.to_dict()
    if args.publish:
        url = args.publish_url or build.default_publish_url(cat)
        out["published"], out["deleted"] = build.publish(cat, args.out, url)
        out["publish_url"] = url
    if args.json:
        _emit(out)
    else:
        print(f"{result.out}: {result.runs} runs, " + ("index unchanged, nothing to do" if result.unchanged else
              f"{result.rebuilt} run pages rebuilt, {result.removed} removed")
              + f" in {result.seconds:.1f}s" + (f"; published {out['published']} files to {out['publish_url']}"
                                               if args.publish else ""))
        if result.pending:
            print(f"{result.pending} runs wait for their curves, parameters and files (--max-details "
                  f"{args.max_details}): their pages say so; the next builds copy them, newest first")
        if result.deferred:
            print(f"{result.deferred} runs wait for their images (--max-images {args.max_images}): "
                  "the next builds copy them, newest first")
        for run_id, why in result.unlinked.items():
            print(f"slurm-yolo: warning: {run_id} listed without a page: {why}", file=sys.stderr)
        print(f"open: slurm-yolo report serve --dir {result.out}   (or {result.out}/index.html)")
    for run_id, error in result.errors.items():
        print(f"slurm-yolo: warning: {run_id}: {error} (retried next build)", file=sys.stderr)
    return 1 if result.errors else 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        serve(args.dir, args.host, args.port, announce=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_mlflow_sync(args: argparse.Namespace) -> int:
    result = mlflow_sync.sync(index.locate(args.index), tracking_uri=args.tracking_uri,
                              experiment_prefix=args.experiment_prefix,
                              allowed_prefix=args.allowed_prefix or build.site_allowed_prefix())
    if args.json:
        _emit(result.to_dict())
    else:
        print(f"mlflow {result.tracking_uri}: {result.created} created, {result.updated} updated, "
              f"{result.unchanged} unchanged")
    for run_id, error in result.errors.items():
        print(f"slurm-yolo: warning: {run_id}: {error} (retried next sync)", file=sys.stderr)
    return 1 if result.errors else 0
