"""Other tools read the compacted index as it is (docs/admin.md, "Querying the index with other tools").

Polars reads the quarterly files straight from the S3 server; DuckDB reads a downloaded copy
(its S3 support is an extension it downloads at run time, which this machine cannot). Both
see the ``quarter`` partition column from the folder names, and find exactly what
``runs list`` finds.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from tests.helpers.catalog_seed import NOW, make_record, write_index
from slurm_yolo.archive import index_compact, index_store
from slurm_yolo.catalog import query, scan

duckdb = pytest.importorskip("duckdb")
pl = pytest.importorskip("polars")


@pytest.fixture
def compacted(cat):
    """300 runs over 25 days: compacted into two quarters, the last 20 pending, as on a live site."""
    rng = random.Random(21)
    lines = [make_record(i, rng, bucket=cat.bucket) for i in range(300)]
    write_index(cat.store.boto3_client(), cat, lines[20:])
    for x in lines[:20]:
        index_store.add_to_index(cat.store, cat.index_url, x)
    index_compact.compact(cat, grace_s=0)
    q = query.Query(since=NOW - timedelta(days=15), where=(query.parse_where("map50_95>0.5"),), sort=("run_id",))
    expected = [x["run_id"] for x in scan.select(cat, q)]
    assert 10 < len(expected) < 300
    return cat, expected


def test_polars_reads_the_quarters_from_the_store(compacted, store):
    cat, expected = compacted
    if store.keys is None:
        pytest.skip("needs the server's key pair")
    keys = dict(store.keys)
    runs = pl.scan_parquet(f"{cat.index_url}parquet/**/*.parquet", hive_partitioning=True, storage_options={
        "aws_endpoint_url": store.endpoint_url, "aws_allow_http": "true", "aws_region": "us-east-1",
        "aws_access_key_id": keys["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": keys["AWS_SECRET_ACCESS_KEY"]})
    cutoff = (NOW - timedelta(days=15)).replace(tzinfo=None)
    got = (runs.filter((pl.col("quarter") >= "2026-Q4") & (pl.col("map50_95") > 0.5)
                       & (pl.col("submitted_time").dt.replace_time_zone(None) >= cutoff))
           .select("run_id").collect()["run_id"].sort().to_list())
    assert got == expected


def test_duckdb_reads_the_quarter_folders(compacted, store, tmp_path):
    cat, expected = compacted
    client = store.boto3_client()
    for obj in index_store.list_keys(client, cat.bucket, cat.key("parquet/")):
        dest = tmp_path / obj["Key"][len(cat.key("")):]
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(cat.bucket, obj["Key"], str(dest))
    rows = duckdb.sql(
        f"SELECT run_id, quarter, hparams->>'lr0' AS lr0 FROM read_parquet('{tmp_path}/parquet/*/*.parquet', "
        "hive_partitioning = true) WHERE quarter >= '2026-Q4' AND map50_95 > 0.5 "
        f"AND submitted_time >= TIMESTAMPTZ '{(NOW - timedelta(days=15)).isoformat()}' ORDER BY run_id").fetchall()
    assert [r[0] for r in rows] == expected
    assert {r[1] for r in rows} <= {"2026-Q4"} and all(float(r[2]) > 0 for r in rows)
