"""Benchmark: the portal's first build and its unchanged rebuild at 10,000 and 50,000 runs, this
checkout against an older commit (``--base``, a ``git worktree``: its code as it was, nothing
re-implemented), on SeaweedFS on loopback.

The synthetic site, per run, the files a short Ultralytics detect training leaves: ``results.csv``
(50 epochs, the real detect header), ``args.yaml`` (Ultralytics' ~90 keys), ``run.json``,
``MANIFEST.json``, ``--plots`` plots and sample images (15 by default; ``--image-kb`` each, random
bytes: the portal copies them, it never decodes them) and two small weights files; 19 objects per
run by default. Seeded once per size in bulk (the tree written locally, one ``s5cmd cp``), the
index as quarterly Parquet files. With ``--store-dir`` the store's data is kept and each size is
seeded once (a 50,000-run set of 19 objects takes most of an hour to seed here: use fewer plots).

Measured, each build in a fresh site folder (``build_site`` in a child process, with the tree
under test first on ``sys.path``):

* **first build**: an empty site folder, every run paged (the default budgets: details of the
  newest ``MAX_DETAILS`` runs, ``MAX_IMAGES`` images), with the default fetcher (presigned GETs),
  then with ``fetch="s5cmd"`` and ``fetch="boto3"`` for the ratio;
* **what the first build left**, in one more build without budgets (the drain timer's builds
  would take it a budget at a time);
* **unchanged rebuild**: the same folder again, nothing changed in the store.

The base's first build takes minutes per 10,000 runs, so it runs at most at ``--base-max``
runs (default 10,000); above that only this checkout is timed.

Run: ``python benchmarks/bench_portal.py [--sizes 10000,50000] [--plots 15,2] [--base COMMIT|none]
[--store-dir DIR] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and ("--child" in sys.argv or "--write-index" in sys.argv):
    flag = "--child" if "--child" in sys.argv else "--write-index"
    sys.path.insert(0, sys.argv[sys.argv.index(flag) + 1])  # the tree under test first
else:
    sys.path.insert(0, str(ROOT))

SEEDED = "seeded.json"  # written last by seed(): the bucket holds a whole set
BASE_COMMIT = "782225b"  # the portal before bulk fetches and the index fingerprint
IMAGES = ("results.png", "labels.jpg", "confusion_matrix.png", "confusion_matrix_normalized.png",
          "BoxF1_curve.png", "BoxPR_curve.png", "BoxP_curve.png", "BoxR_curve.png", "train_batch0.jpg",
          "train_batch1.jpg", "train_batch2.jpg", "val_batch0_labels.jpg", "val_batch0_pred.jpg",
          "val_batch1_labels.jpg", "val_batch1_pred.jpg")
HEADER = ("epoch,time,train/box_loss,train/cls_loss,train/dfl_loss,metrics/precision(B),metrics/recall(B),"
          "metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss,val/cls_loss,val/dfl_loss,lr/pg0,lr/pg1,lr/pg2")
ARGS = {"task": "detect", "mode": "train", "model": "yolov8n.yaml", "data": "/data/pcb/data.yaml", "epochs": 50,
        "time": None, "patience": 100, "batch": 16, "imgsz": 640, "save": True, "save_period": -1, "cache": False,
        "device": "0", "workers": 8, "project": None, "name": "train", "exist_ok": False, "pretrained": True,
        "optimizer": "auto", "verbose": True, "seed": 0, "deterministic": True, "single_cls": False,
        "rect": False, "cos_lr": False, "close_mosaic": 10, "resume": False, "amp": True, "fraction": 1.0,
        "profile": False, "freeze": None, "multi_scale": False, "overlap_mask": True, "mask_ratio": 4,
        "dropout": 0.0, "val": True, "split": "val", "save_json": False, "conf": None, "iou": 0.7,
        "max_det": 300, "half": False, "dnn": False, "plots": True, "source": None, "vid_stride": 1,
        "stream_buffer": False, "visualize": False, "augment": False, "agnostic_nms": False, "classes": None,
        "retina_masks": False, "embed": None, "show": False, "save_frames": False, "save_txt": False,
        "save_conf": False, "save_crop": False, "show_labels": True, "show_conf": True, "show_boxes": True,
        "line_width": None, "format": "torchscript", "keras": False, "optimize": False, "int8": False,
        "dynamic": False, "simplify": True, "opset": None, "workspace": None, "nms": False, "lr0": 0.01,
        "lrf": 0.01, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 3.0, "warmup_momentum": 0.8,
        "warmup_bias_lr": 0.1, "box": 7.5, "cls": 0.5, "dfl": 1.5, "pose": 12.0, "kobj": 1.0, "nbs": 64,
        "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5,
        "shear": 0.0, "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "bgr": 0.0, "mosaic": 1.0,
        "mixup": 0.0, "cutmix": 0.0, "copy_paste": 0.0, "auto_augment": "randaugment", "erasing": 0.4,
        "cfg": None, "tracker": "botsort.yaml", "save_dir": "runs/detect/train"}


def results_csv(rng: random.Random, epochs: int = 50) -> bytes:
    rows = [HEADER]
    for e in range(1, epochs + 1):
        m = min(0.95, e / epochs * rng.uniform(0.5, 1.0))
        loss = 3.0 / (1 + e / 5)
        rows.append(",".join(f"{v:.5g}" for v in (
            e, e * 31.5, loss, loss * 0.8, loss * 0.5, m + 0.05, m, m + 0.1, m, loss * 1.1, loss * 0.9,
            loss * 0.6, 0.01, 0.01, 0.01)))
    return ("\n".join(rows) + "\n").encode()


def seed(server, bucket: str, n: int, tree: Path, image_kb: int, base: Path | None, plots: int = len(IMAGES)) -> str:
    """``n`` archived runs in ``bucket`` and their index; returns the index URL.

    ``plots``: images per run (the first of :data:`IMAGES`); fewer make a 50,000-run set seedable in
    minutes. The index is written by ``base``'s code (``None``: this checkout's).
    """
    import yaml

    from slurm_yolo.archive import layout, s5cmd
    from tests.helpers.catalog_seed import make_record, run_json

    rng = random.Random(n)
    blob = rng.randbytes(image_kb * 1024 + 4096)
    lines = []
    for i in range(n):
        line = make_record(i, rng, bucket=bucket)
        rid = line["run_id"]
        folder = tree / line["archive_url"].split("/", 3)[3]
        (folder / "weights").mkdir(parents=True)
        files = {"results.csv": results_csv(rng), "args.yaml": yaml.safe_dump({**ARGS, "lr0": line["hparams"]["lr0"]},
                                                                               sort_keys=False).encode(),
                 "weights/best.pt": blob[:1024], "weights/last.pt": blob[1:1025]}
        for k, name in enumerate(IMAGES[:plots]):
            files[name] = blob[k:k + image_kb * 1024]
        for rel, data in files.items():
            (folder / rel).write_bytes(data)
        manifest = {"version": 1, "files": {rel: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                                            for rel, d in files.items()}}
        (folder / layout.MANIFEST).write_text(json.dumps(manifest))
        record = run_json(rid, bucket, project=line["project"], map50_95=line["map50_95"])
        record.update(archive_url=line["archive_url"], task=line["task"], user=line["user"],
                      end_state=line["end_state"], submitted_at=line["submitted_at"])
        (folder / "run.json").write_text(json.dumps(record))
        lines.append(line)
    store = server.store()
    argv = s5cmd.base_argv(store, workers=64) + ["cp", f"{tree}/runs/*", f"s3://{bucket}/runs/"]
    result = s5cmd.run(argv, store, timeout=7200)
    s5cmd.check_s5cmd(result, "seed the runs")
    # The index in the base's format (this checkout reads older index versions, not the reverse).
    (tree / "lines.json").write_text(json.dumps(lines))
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--write-index", str(base or ROOT),
                    str(tree / "lines.json"), server.endpoint, ",".join(f"{k}={v}" for k, v in server.keys), bucket],
                   check=True, timeout=3600, cwd=base or ROOT)
    # Marks the set as whole: a --store-dir run seeds a size once and reuses it.
    store.boto3_client().put_object(Bucket=bucket, Key=SEEDED, Body=json.dumps({"runs": n, "plots": plots}).encode())
    return f"s3://{bucket}/index/"


def write_index(lines_json: str, endpoint: str, keys: str, bucket: str) -> None:
    """The index quarters of the seeded runs, written by whatever slurm_yolo is first on sys.path."""
    from slurm_yolo.archive import index_format
    from slurm_yolo.store import Store

    store = Store(endpoint_url=endpoint, keys=tuple(tuple(kv.split("=", 1)) for kv in keys.split(",")))
    client = store.boto3_client()
    by_quarter: dict[str, list[dict]] = {}
    for line in json.loads(Path(lines_json).read_text()):
        by_quarter.setdefault(index_format.quarter_of(line), []).append(line)
    for quarter, recs in by_quarter.items():
        client.put_object(Bucket=bucket, Key="index/" + index_format.part_rel(quarter),
                          Body=index_format.encode(index_format.to_table(recs)))


def child(index_url: str, out: str, endpoint: str, keys: str, fetch: str, catch_up: str = "1") -> None:
    """Time a first build, the builds that bring the deferred images, and an unchanged rebuild,
    with whatever slurm_yolo is first on sys.path."""
    from slurm_yolo.catalog.index import Catalog
    from slurm_yolo.report import build
    from slurm_yolo.store import Store

    store = Store(endpoint_url=endpoint, keys=tuple(tuple(kv.split("=", 1)) for kv in keys.split(",")),
                  atomic_conditional_writes=True)
    cat = Catalog(store, index_url)
    kw = {"fetch": fetch} if fetch != "-" else {}
    takes = inspect.signature(build.build_site).parameters  # an older tree has fewer budgets
    got = {}
    t0 = time.monotonic()
    result = build.build_site(cat, out, **kw)
    got["first"] = time.monotonic() - t0
    got["first_rebuilt"], got["first_errors"] = result.rebuilt, len(result.errors)
    got["first_deferred"] = getattr(result, "deferred", 0)
    got["first_pending"] = getattr(result, "pending", 0)
    got["catch_up"], got["catch_up_builds"] = 0.0, 0

    def waiting(r) -> int:
        return getattr(r, "deferred", 0) + getattr(r, "pending", 0)

    if waiting(result) and catch_up == "1":
        # What the first build left for later (details, images) in one more build; the drain
        # timer's builds would take it a budget at a time.
        t0 = time.monotonic()
        result = build.build_site(cat, out, **kw, **{k: None for k in ("max_images", "max_details") if k in takes})
        got["catch_up"], got["catch_up_builds"] = time.monotonic() - t0, 1
    if waiting(result):
        return print(json.dumps(got))  # an unchanged rebuild needs every image in: not timed here
    t0 = time.monotonic()
    result = build.build_site(cat, out, **kw)
    got["unchanged"] = time.monotonic() - t0
    got["unchanged_rebuilt"] = result.rebuilt
    print(json.dumps(got))


def time_tree(tree: str, server, index_url: str, out: Path, fetch: str = "-", catch_up: bool = False) -> dict:
    keys = ",".join(f"{k}={v}" for k, v in server.keys)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", tree, index_url, str(out),
                           server.endpoint, keys, fetch, "1" if catch_up else "0"], capture_output=True, text=True, timeout=14400, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"build in {tree} failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def kept_server(folder: Path):
    """SeaweedFS on a free port with its data in ``folder``, kept after the run (the seeded sets with it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _services import STORE_SH, S3Server, free_port

    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["bash", str(STORE_SH), "start", "seaweedfs", str(folder), str(free_port())],
                         capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "SLURM_YOLO_VENV": str(Path(sys.executable).parent.parent)})
    try:
        if out.returncode != 0:
            raise RuntimeError(f"scripts/store.sh could not start seaweedfs: {out.stderr[-2000:]}")
        env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        yield S3Server("seaweedfs", env["ENDPOINT"], (("AWS_ACCESS_KEY_ID", env["ACCESS_KEY"]),
                                                      ("AWS_SECRET_ACCESS_KEY", env["SECRET_KEY"])),
                       int((folder / "server.pid").read_text()))
    finally:
        subprocess.run(["bash", str(STORE_SH), "stop", str(folder)], capture_output=True, timeout=60)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(*sys.argv[i + 2:i + 8])
        return
    if "--write-index" in sys.argv:
        i = sys.argv.index("--write-index")
        write_index(*sys.argv[i + 2:i + 6])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,50000")
    p.add_argument("--base", default=BASE_COMMIT, help="the older commit to compare with ('none': no base)")
    p.add_argument("--base-max", type=int, default=10000, help="largest size the base's build is timed at")
    p.add_argument("--boto3-max", type=int, default=10000,
                   help="largest size fetch='s5cmd' and fetch='boto3' are timed at")
    p.add_argument("--catch-up-max", type=int, default=10000,
                   help="largest size the builds that bring the deferred images are timed at")
    p.add_argument("--image-kb", type=int, default=8)
    p.add_argument("--plots", default=str(len(IMAGES)),
                   help=f"images per run, per size (comma list, the last repeats; default {len(IMAGES)})")
    p.add_argument("--store-dir", help="keep SeaweedFS's data here: each size is seeded once and reused")
    p.add_argument("--seed-only", action="store_true", help="seed (into --store-dir) and time nothing")
    p.add_argument("--markdown", help="also write the table to this file")
    args = p.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _services import s3_server

    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-portal-"))
    old = None if args.base == "none" else work / "base"
    if old is not None:
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.base], cwd=ROOT, check=True)
    sizes = [int(x) for x in args.sizes.split(",")]
    plots = [int(x) for x in args.plots.split(",")]
    plots += [plots[-1]] * (len(sizes) - len(plots))
    try:
        with (kept_server(Path(args.store_dir)) if args.store_dir else s3_server("seaweedfs")) as server:
            client = server.store().boto3_client()
            for n, n_plots in zip(sizes, plots):
                bucket = f"portal-{n}-{n_plots}"
                t0 = time.monotonic()
                try:
                    client.head_object(Bucket=bucket, Key=SEEDED)
                    index_url, seeded = f"s3://{bucket}/index/", None
                    print(f"{n} runs ({n_plots} plots each) already seeded in {args.store_dir}", flush=True)
                except Exception:
                    with contextlib.suppress(Exception):
                        client.create_bucket(Bucket=bucket)
                    index_url = seed(server, bucket, n, work / f"tree-{n}", args.image_kb, old, n_plots)
                    seeded = time.monotonic() - t0
                    shutil.rmtree(work / f"tree-{n}", ignore_errors=True)
                    print(f"{n} runs seeded in {seeded:.0f} s (load {load()})", flush=True)
                if args.seed_only:
                    continue
                row = {"runs": n, "plots": n_plots, "seed_s": seeded, "load_before": load()}
                row["new"] = time_tree(str(ROOT), server, index_url, work / f"site-new-{n}", "presigned",
                                       catch_up=n <= args.catch_up_max)
                print(f"  this checkout (presigned): {row['new']} (load {load()})", flush=True)
                row["load_mid"] = load()  # after this checkout's builds (first, what it left, unchanged)
                for how in ("s5cmd", "boto3"):
                    if n <= args.boto3_max:  # the other fetchers' first build, for the ratio
                        shutil.rmtree(work / f"site-new-{n}", ignore_errors=True)
                        row[how] = time_tree(str(ROOT), server, index_url, work / f"site-new-{n}", how)
                        print(f"  this checkout ({how}): {row[how]} (load {load()})", flush=True)
                if old is not None and n <= args.base_max:
                    row["old"] = time_tree(str(old), server, index_url, work / f"site-old-{n}")
                    print(f"  base {args.base}: {row['old']} (load {load()})", flush=True)
                row["load_after"] = load()
                rows.append(row)
                shutil.rmtree(work / f"site-new-{n}", ignore_errors=True)
                shutil.rmtree(work / f"site-old-{n}", ignore_errors=True)
    finally:
        if old is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(rows, args)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


def markdown(rows: list[dict], args) -> str:
    machine = f"{os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}"
    out = [f"SeaweedFS on loopback, {machine}; images {args.image_kb} KB; base = {args.base}", "",
           "| runs (objects each) | build | base s | this checkout (presigned) s | base / this | "
           "fetch=s5cmd s | fetch=boto3 s | load (1, 5, 15 min) before the first build → after the unchanged one |",
           "|---:|---|---:|---:|---:|---:|---:|---|"]

    def cell(x: float | None, digits: int = 2) -> str:
        return "" if x is None else f"{x:.{digits}f}"

    def ratio(old: float | None, new: float) -> str:
        return "" if old is None else f"{old / new:.1f}×"

    for row in rows:
        new, old = row["new"], row.get("old", {})
        runs = f"{row['runs']:,} ({row['plots'] + 4})"
        out.append(f"| {runs} | first build (every run paged; details of {new['first_pending']:,} runs and images "
                   f"of {new['first_deferred']:,} more pending) | {cell(old.get('first'))} | {new['first']:.2f} | "
                   f"{ratio(old.get('first'), new['first'])} | {cell(row.get('s5cmd', {}).get('first'))} | "
                   f"{cell(row.get('boto3', {}).get('first'))} | {row['load_before']} → {row['load_mid']} |")
        if new["catch_up_builds"]:
            out.append(f"| {runs} | what the first build left, in one more build | | {new['catch_up']:.2f} | | | | |")
        if "unchanged" in new:
            out.append(f"| {runs} | unchanged rebuild | {cell(old.get('unchanged'), 3)} | {new['unchanged']:.3f} | "
                       f"{ratio(old.get('unchanged'), new['unchanged'])} | | | → {row['load_after']} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
