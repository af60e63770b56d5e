"""`runs list` end to end (CLI → store → filters) over 1,000 seeded runs; expectations computed independently."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import uuid

import pytest

from tests.helpers.catalog_seed import make_record, write_index
from slurm_yolo.archive import index_store
from slurm_yolo.catalog import index
from slurm_yolo.catalog.index import Catalog
from slurm_yolo.cli import main

N = 1000


@pytest.fixture(scope="module")
def seeded_store(s3_server):
    """1,000 runs: 990 compacted in INDEX.jsonl, 20 still pending (10 new, 10 updating compacted runs)."""
    store = s3_server.store()
    client = store.boto3_client()
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    cat = Catalog(store, f"s3://{bucket}/index/")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    rng = random.Random(7)
    lines = [make_record(i, rng, now) for i in range(N)]
    compacted, pending = lines[:990], lines[990:]
    stale = [{**x, "map50_95": 0.0, "end_state": "UNKNOWN"} for x in compacted[:10]]
    write_index(client, cat, stale + compacted[10:])
    for x in compacted[:10] + pending:
        client.put_object(Bucket=bucket, Key=index_store.pending_key(cat, x["run_id"]), Body=json.dumps(x))
    return cat, lines, now


@pytest.fixture
def seeded(seeded_store, monkeypatch):
    cat, lines, now = seeded_store
    monkeypatch.setenv("AWS_ENDPOINT_URL", cat.store.endpoint_url)
    for k, v in cat.store.keys:
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SLURM_YOLO_INDEX", cat.index_url)
    monkeypatch.setenv("SLURM_YOLO_SITE_CONFIG", "/nonexistent/site.yaml")
    return lines, now


def run_list(capsys, *argv: str) -> list[str]:
    assert main(["runs", "list", "--json", *argv]) == 0
    return [x["run_id"] for x in json.loads(capsys.readouterr().out)]


def ts(x: dict) -> datetime:
    return datetime.fromisoformat(x["submitted_at"].replace("Z", "+00:00"))


def test_filters(seeded, capsys):
    lines, now = seeded
    ids = lambda pred: sorted(x["run_id"] for x in lines if pred(x))  # noqa: E731
    m = lambda x: x["map50_95"]  # noqa: E731

    assert sorted(run_list(capsys)) == ids(lambda x: True)
    assert sorted(run_list(capsys, "--project", "pcb")) == ids(lambda x: x["project"] == "pcb")
    assert sorted(run_list(capsys, "--project", "weld", "--task", "segment", "--state", "COMPLETED")) == ids(
        lambda x: x["project"] == "weld" and x["task"] == "segment" and x["end_state"] == "COMPLETED")
    assert sorted(run_list(capsys, "--where", "map50_95>0.85")) == ids(lambda x: m(x) is not None and m(x) > 0.85)
    assert sorted(run_list(capsys, "--where", "map50_95>=0.5", "--where", "hparams.lr0==0.001",
                           "--where", "hparams.batch!=8")) == ids(
        lambda x: m(x) is not None and m(x) >= 0.5 and x["hparams"]["lr0"] == 0.001 and x["hparams"]["batch"] != 8)
    assert sorted(run_list(capsys, "--where", "dataset_version==v2")) == ids(lambda x: x["dataset_version"] == "v2")
    assert sorted(run_list(capsys, "--sweep", "sw3", "--user", "bo")) == ids(
        lambda x: x["sweep_id"] == "sw3" and x["user"] == "bo")


@pytest.mark.parametrize("since, delta", [("12h", timedelta(hours=12)), ("2w", timedelta(weeks=2)),
                                          ("30d", timedelta(days=30)), ("90d", timedelta(days=90))])
def test_time_windows(seeded, capsys, since, delta):
    lines, now = seeded
    expected = sorted(x["run_id"] for x in lines if ts(x) >= now - delta)
    assert sorted(run_list(capsys, "--since", since)) == expected
    assert 0 < len(expected) <= N


def test_since_iso_date(seeded, capsys):
    lines, now = seeded
    day = (now - timedelta(days=20)).date()
    cutoff = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    assert sorted(run_list(capsys, "--since", day.isoformat())) == sorted(x["run_id"] for x in lines if ts(x) >= cutoff)


def test_sort_and_limit(seeded, capsys):
    lines, _ = seeded
    with_metric = sorted((x for x in lines if x["map50_95"] is not None), key=lambda x: (-x["map50_95"]))
    got = run_list(capsys, "--sort", "-map50_95")
    assert [next(x for x in lines if x["run_id"] == r)["map50_95"] for r in got] == \
        [x["map50_95"] for x in with_metric] + [None] * (N - len(with_metric))  # None last
    assert run_list(capsys, "--sort", "-map50_95,run_id", "--limit", "5") == \
        [x["run_id"] for x in sorted(with_metric, key=lambda x: (-x["map50_95"], x["run_id"]))[:5]]
    assert run_list(capsys) == sorted((x["run_id"] for x in lines), reverse=True)  # default: newest first
    asc = run_list(capsys, "--project", "pcb", "--sort", "hparams.lr0,run_id", "--limit", "50")
    assert asc == [x["run_id"] for x in sorted((x for x in lines if x["project"] == "pcb"),
                                                key=lambda x: (x["hparams"]["lr0"], x["run_id"]))][:50]


def test_bad_expression_exits_2_with_the_fix(cli_env, capsys):
    assert main(["runs", "list", "--where", "map50_95 = 0.8"]) == 2
    assert "FIELD OP VALUE" in capsys.readouterr().err


def test_table_output(seeded, capsys):
    assert main(["runs", "list", "--project", "pcb", "--limit", "3"]) == 0
    out = capsys.readouterr()
    assert "run_id" in out.out and "3 runs" in out.err


@pytest.mark.parametrize("spec", ["-map50_95", "-hparams.lr0,run_id", "-map50_95,-run_id"])
def test_sort_spec_with_leading_dash_is_a_value(spec):
    from slurm_yolo.cli import build_parser

    args = build_parser().parse_args(["runs", "list", "--sort", spec, "--json"])
    assert (args.sort, args.json) == (spec, True)
