"""Every task's own metric through the index against the real S3 servers: ``runs list``
queries and columns, ``runs compare``, keep-the-best pruning by each task's metric, quarters
written before the metric fields existed, and a file of a newer schema."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.catalog_seed import archive_run, run_json, write_index
from slurm_yolo.archive import index_compact, index_format, index_store
from slurm_yolo.catalog import index, query, scan
from slurm_yolo.cli import main
from slurm_yolo.errors import ConfigError

CLASSIFY_HEADER = "epoch,time,train/loss,metrics/accuracy_top1,metrics/accuracy_top5,val/loss\n"


def classify_run(run_id: str, bucket: str, top1: float | None, *, end: datetime, project="parts",
                 model="yolov8n-cls") -> dict:
    """A classify run's record as the epilog leaves it (metrics from record.read_metrics' shape)."""
    rec = run_json(run_id, bucket, project=project, model=model, end=end)
    rec["task"] = rec["config"]["run"]["task"] = "classify"
    rec["archive_url"] = f"s3://{bucket}/runs/classify/{project}/{model}/{run_id}/"
    rec["fitness_metric"] = "metrics/accuracy_top1"
    rec["metrics"] = {"epoch": 3, "best_epoch": 3, "epochs_done": 3, "fitness_metric": "metrics/accuracy_top1",
                      "fitness": top1, "top1": top1, "top5": 1.0, "map50": None, "map50_95": None,
                      "precision": None, "recall": None}
    return rec


def classify_csv(curve: list[float]) -> bytes:
    return (CLASSIFY_HEADER + "".join(f"{e},1.0,0.5,{v},1.0,0.4\n" for e, v in enumerate(curve, 1))).encode()


@pytest.fixture
def mixed_store(cli_env, client, bucket):
    """Old runs of one classify project and one detect project, and one recent run of each.

    The classify runs were submitted oldest-first in order of *rising* accuracy, and one has
    no metric at all: ranked by map50_95 (which none has) the oldest would be kept.
    """
    now = datetime.now(timezone.utc)
    old = now - timedelta(days=300)
    runs = [classify_run(f"20250101_00000{i}_cls000", bucket, top1, end=old + timedelta(hours=i))
            for i, top1 in enumerate([0.20, 0.55, None, 0.91, 0.73])]
    runs.append(classify_run("20260101_000000_clsnew", bucket, 0.1, end=now - timedelta(days=1)))
    runs += [run_json(f"20250101_00000{i}_det000", bucket, map50_95=m, end=old + timedelta(hours=i))
             for i, m in enumerate([0.6, 0.3, 0.8])]
    lines = []
    for rec in runs:
        csv = classify_csv([0.1, rec["metrics"]["top1"] or 0.0]) if rec["task"] == "classify" else b"epoch\n"
        lines.append(archive_run(client, bucket, rec, {"results.csv": csv}, cli_env.index_url))
    write_index(client, cli_env, lines)
    return {rec["run_id"]: rec for rec in runs}


def test_prune_keeps_the_most_accurate_classify_runs(mixed_store, cli_env, capsys):
    assert main(["store", "prune", "--keep-top", "2", "--older-than", "180d", "--project", "parts",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "fitness"
    assert {x["run_id"] for x in out["keep"]} == {"20250101_000003_cls000", "20250101_000004_cls000"}  # 0.91, 0.73
    assert {x["run_id"] for x in out["delete"]} == {"20250101_000000_cls000", "20250101_000001_cls000",
                                                    "20250101_000002_cls000"}  # the run without a value goes
    assert all(x["fitness_metric"] == "metrics/accuracy_top1" for x in out["keep"])
    left = {x["run_id"] for x in index.load_records(cli_env)}
    assert {r for r in mixed_store if r.endswith("cls000")} & left == {"20250101_000003_cls000",
                                                                        "20250101_000004_cls000"}
    assert "20260101_000000_clsnew" in left  # not old: not part of the plan


def test_a_mixed_store_prunes_each_group_by_its_own_metric(mixed_store, cli_env, capsys):
    assert main(["store", "prune", "--keep-top", "1", "--older-than", "180d", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {x["run_id"] for x in plan["keep"]} == {"20250101_000003_cls000", "20250101_000002_det000"}
    assert {x["run_id"]: x["fitness"] for x in plan["keep"]} == {"20250101_000003_cls000": 0.91,
                                                                  "20250101_000002_det000": 0.8}
    # --metric still overrides: every classify run has top5 1.0, so the tie goes to the first run ID
    assert main(["store", "prune", "--keep-top", "1", "--older-than", "180d", "--metric", "metrics.top5",
                 "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["metric"] == "metrics.top5"
    assert "20250101_000000_cls000" in {x["run_id"] for x in plan["keep"]}  # all tie at 1.0: the first ID


def test_runs_list_queries_and_shows_the_tasks_metric(mixed_store, cli_env, capsys):
    assert main(["runs", "list", "--where", "metrics.top1>0.5", "--sort", "-metrics.top1", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [x["run_id"] for x in got] == ["20250101_000003_cls000", "20250101_000004_cls000",
                                          "20250101_000001_cls000"]
    assert got[0]["metrics"] == {"top1": 0.91, "top5": 1.0} and got[0]["fitness"] == 0.91
    assert main(["runs", "list", "--where", "fitness>0.7", "--task", "detect", "--json"]) == 0
    assert [x["run_id"] for x in json.loads(capsys.readouterr().out)] == ["20250101_000002_det000"]

    assert main(["runs", "list", "--task", "classify"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header[5:7] == ["top1", "top5"] and "map50_95" not in header
    assert main(["runs", "list", "--task", "detect"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[5:7] == ["map50_95", "map50"]  # as before
    assert main(["runs", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[5:7] == ["fitness_metric", "fitness"]

    assert main(["runs", "list", "--where", "metrics.top-1>0.5"]) == 2
    assert "metrics.top" in capsys.readouterr().err


def test_compare_follows_the_tasks_metric(mixed_store, cli_env, capsys):
    assert main(["runs", "compare", "20250101_000003_cls000", "20250101_000004_cls000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "top1"
    assert out["curves"] == {"20250101_000003_cls000": [[1, 0.1], [2, 0.91]],
                             "20250101_000004_cls000": [[1, 0.1], [2, 0.73]]}
    assert out["metrics"]["metrics.top1"] == [0.91, 0.73] and out["metrics"]["fitness"] == [0.91, 0.73]
    assert main(["runs", "compare", "20250101_000003_cls000", "20250101_000004_cls000", "--metric", "top5",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["curves"]["20250101_000003_cls000"] == [[1, 1.0], [2, 1.0]]
    assert main(["runs", "compare", "20250101_000003_cls000", "20250101_000004_cls000", "--metric", "miou"]) == 2
    assert "accuracy" not in capsys.readouterr().err  # names the fields it has: top1, top5


def v1_file(records: list[dict]) -> bytes:
    """A quarter as the previous version wrote it: the box columns only, no schema version."""
    table = index_format.to_table(records).drop_columns(["fitness_metric", "fitness", "metrics"])
    table = table.replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def test_a_quarter_of_the_previous_version_is_read_and_compacted_into(cat, client, bucket):
    old = [run_json(f"20261101_00000{i}_old000", bucket, map50_95=0.1 * (i + 1)) for i in range(3)]
    old_lines = [{k: v for k, v in index_store_line(r).items() if k not in ("fitness_metric", "fitness", "metrics")}
                 for r in old]
    key = cat.key(index_format.part_rel("2026-Q4"))
    client.put_object(Bucket=bucket, Key=key, Body=v1_file(old_lines))
    got = {x["run_id"]: x for x in index.load_records(cat)}
    assert got["20261101_000002_old000"]["fitness"] == pytest.approx(0.3)
    assert got["20261101_000002_old000"]["fitness_metric"] == "metrics/mAP50-95(B)"
    assert got["20261101_000002_old000"]["metrics"]["map50_95"] == pytest.approx(0.3)
    q = query.Query(where=(query.parse_where("metrics.map50_95>0.15"),), sort=("run_id",))
    assert [x["run_id"] for x in scan.select(cat, q)] == ["20261101_000001_old000", "20261101_000002_old000"]

    new = classify_run("20261101_000009_new000", bucket, 0.9, end=datetime(2026, 11, 2, tzinfo=timezone.utc))
    index_store.add_to_index(cat.store, cat.index_url, index_store_line(new))
    result = index_compact.compact(cat, grace_s=0)
    assert result.runs_changed == 1 and result.quarters == ("2026-Q4",)
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert index_format.file_version(pq.ParquetFile(pa.BufferReader(body)).schema_arrow) == index_format.SCHEMA_VERSION
    rows = {x["run_id"]: x for x in index_format.from_table(index_format.decode(body))}
    assert set(rows) == {r["run_id"] for r in old} | {new["run_id"]}
    assert rows["20261101_000000_old000"]["fitness"] == pytest.approx(0.1)  # filled in, now stored
    assert rows[new["run_id"]]["metrics"] == {"top1": 0.9, "top5": 1.0}


def index_store_line(run: dict) -> dict:
    from slurm_yolo.archive import layout

    return layout.index_record(run)


def test_a_file_of_a_newer_schema_is_refused_with_the_upgrade(cli_env, client, bucket, capsys):
    table = index_format.to_table([index_store_line(run_json("20261101_000000_newer0", bucket))])
    newer = index_format.SCHEMA_VERSION + 1
    table = table.replace_schema_metadata({index_format.SCHEMA_KEY: str(newer).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    key = cli_env.key(index_format.part_rel("2026-Q4"))
    client.put_object(Bucket=bucket, Key=key, Body=sink.getvalue().to_pybytes())
    with pytest.raises(ConfigError, match=rf"quarter=2026-Q4/runs.parquet: .*schema version {newer}.*upgrade slurm-yolo"):
        index.load_records(cli_env)
    assert main(["runs", "list"]) == 2
    assert "upgrade slurm-yolo" in capsys.readouterr().err
    index_store.add_to_index(cli_env.store, cli_env.index_url, index_store_line(run_json("20261102_000000_x00000",
                                                                                        bucket)))
    assert main(["index", "compact"]) == 2  # never rewrites what it cannot read whole
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == sink.getvalue().to_pybytes()


def test_duckdb_and_polars_read_the_metrics_map(mixed_store, cli_env, client, bucket, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    for obj in index_store.list_keys(client, bucket, cli_env.key("parquet/")):
        dest = tmp_path / obj["Key"][len(cli_env.key("")):]
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, obj["Key"], str(dest))
    rows = duckdb.sql(f"SELECT run_id, metrics['top1'] FROM read_parquet('{tmp_path}/parquet/*/*.parquet', "
                      "hive_partitioning = true) WHERE metrics['top1'] > 0.7 ORDER BY run_id").fetchall()
    assert rows == [("20250101_000003_cls000", 0.91), ("20250101_000004_cls000", 0.73)]
    frame = pl.read_parquet(f"{tmp_path}/parquet/*/*.parquet", hive_partitioning=True)
    best = frame.filter(pl.col("fitness_metric") == "metrics/accuracy_top1").sort("fitness", descending=True, nulls_last=True)
    assert best["run_id"][0] == "20250101_000003_cls000"


def test_rebuild_fills_in_the_task_metric_of_a_record_that_predates_it(cat, client, bucket):
    end = datetime(2026, 11, 1, tzinfo=timezone.utc)
    old_classify = classify_run("20261101_000000_oldcls", bucket, None, end=end)
    del old_classify["fitness_metric"]
    # what record.read_metrics wrote before the task metrics: the box columns, all empty
    old_classify["metrics"] = {"epoch": 2, "map50": None, "map50_95": None, "precision": None, "recall": None,
                               "epochs_done": 2}
    archive_run(client, bucket, old_classify, {"results.csv": classify_csv([0.4, 0.85, 0.6])}, cat.index_url)
    detect = run_json("20261101_000001_olddet", bucket, map50_95=0.42, end=end)
    archive_run(client, bucket, detect, {"results.csv": b"epoch\n"}, cat.index_url)
    assert index.rebuild(cat) == 2
    got = {x["run_id"]: x for x in index.load_records(cat)}
    assert got["20261101_000000_oldcls"]["fitness_metric"] == "metrics/accuracy_top1"
    assert got["20261101_000000_oldcls"]["fitness"] == 0.85
    assert got["20261101_000000_oldcls"]["metrics"] == {"top1": 0.85, "top5": 1.0}
    assert (got["20261101_000001_olddet"]["fitness"], got["20261101_000001_olddet"]["map50_95"]) == (0.42, 0.42)
