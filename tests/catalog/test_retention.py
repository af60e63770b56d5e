"""Lifecycle rules and keep-the-best pruning against the loopback store."""

from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta, timezone

import pytest

from tests.helpers.catalog_seed import archive_run, run_json, write_index
from slurm_yolo.archive import layout
from slurm_yolo.archive import index_store
from slurm_yolo.catalog import index, retention
from slurm_yolo.cli import main
from slurm_yolo.errors import ConfigError


def test_lifecycle_rules_read_back_equal_to_what_was_applied(s3_server, cli_env, store, bucket, capsys):
    other = {"ID": "keep-me", "Status": "Enabled", "Filter": {"Prefix": "tmp/"}, "Expiration": {"Days": 1}}
    store.boto3_client().put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [other]})

    full = ["store", "lifecycle", "--apply", "--prefix", "runs/", "--ia-after", "30d", "--expire-after", "180d",
            "--json"]
    if not s3_server.lifecycle_transitions:
        # SeaweedFS has one storage class and answers 501 NotImplemented to transitions: the
        # command says what to apply instead, and the bucket keeps its rules.
        assert main(full) == 1
        assert "--ia-after none --expire-after" in capsys.readouterr().err
        assert retention.read_lifecycle(store, bucket) == [other]
        expiry_only = ["store", "lifecycle", "--apply", "--prefix", "runs/", "--ia-after", "none",
                       "--expire-after", "180d", "--json"]
        assert main(expiry_only) == 0
        applied = retention.lifecycle_rule("runs/", ia_after=None, expire_after=180)
        assert "Transitions" not in applied
        assert json.loads(capsys.readouterr().out)["rules"] == [other, applied]
        return
    assert main(full) == 0
    applied = retention.lifecycle_rule("runs/", ia_after=30, expire_after=180)
    assert json.loads(capsys.readouterr().out)["rules"] == [other, applied]
    assert main(["store", "lifecycle", "--show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"bucket": bucket, "rules": [other, applied]}

    # re-applying replaces our rule (by ID) and keeps the others
    assert main(["store", "lifecycle", "--apply", "--prefix", "runs/", "--archive-after", "26w", "--json"]) == 0
    capsys.readouterr()
    assert retention.read_lifecycle(store, bucket) == [other, retention.lifecycle_rule("runs/", archive_after=182)]
    assert retention.lifecycle_rule("runs/", archive_after=182)["Transitions"] == [
        {"Days": 30, "StorageClass": "STANDARD_IA"}, {"Days": 182, "StorageClass": "GLACIER"}]
    assert main(["store", "lifecycle", "--show"]) == 0
    out = capsys.readouterr().out
    assert "keep-me" in out and "GLACIER" in out and "182d" in out


def test_lifecycle_refuses_to_age_out_the_index(cli_env, capsys):
    assert main(["store", "lifecycle", "--apply", "--expire-after", "180d"]) == 2  # prefix "" covers index/
    assert "--prefix" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="earlier"):
        retention.lifecycle_rule("runs/", ia_after=30, expire_after=20)


def test_show_without_rules(cli_env, capsys):
    assert main(["store", "lifecycle", "--show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rules"] == []


@pytest.fixture
def old_and_new_runs(cli_env, client, bucket):
    """26 archived runs in two (task, project, model) groups, ended 10 to 385 days ago; some without metric."""
    now = datetime.now(timezone.utc)
    rng = random.Random(11)
    lines = []
    for i in range(26):
        model = "yolov8n" if i % 2 else "yolov8s"
        metric = None if i in (3, 8) else round(rng.random(), 4)
        rec = run_json(f"20250101_0000{i:02d}_prune0", bucket, model=model, map50_95=metric,
                       end=now - timedelta(days=10 + 15 * i, hours=12))
        lines.append(archive_run(client, bucket, rec, {"results.csv": b"epoch\n", "weights/best.pt": b"w" * i},
                                 cli_env.index_url))
    write_index(client, cli_env, lines)
    return lines


def archived_keys(client, bucket: str) -> set[str]:
    return {o["Key"] for o in index_store.list_keys(client, bucket, "runs/")}


def test_prune_dry_run_lists_exactly_what_a_real_prune_deletes(old_and_new_runs, cli_env, client, bucket, capsys):
    lines = old_and_new_runs
    cutoff = datetime.now(timezone.utc) - timedelta(days=180)
    old = [x for x in lines if datetime.fromisoformat(x["end"].replace("Z", "+00:00")) < cutoff]
    expected_keep = set()
    for model in ("yolov8n", "yolov8s"):
        group = [x for x in old if x["model_name"] == model]
        ranked = sorted(group, key=lambda x: -(x["map50_95"] if x["map50_95"] is not None else -1))
        expected_keep |= {x["run_id"] for x in ranked[:math.ceil(len(group) * 0.3)]}
    expected_delete = {x["run_id"] for x in old} - expected_keep
    before = archived_keys(client, bucket)

    argv = ["store", "prune", "--keep-top", "30%", "--metric", "map50_95", "--older-than", "180d", "--json"]
    assert main(argv + ["--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {x["run_id"] for x in plan["delete"]} == expected_delete and len(expected_delete) == 8
    assert {x["run_id"] for x in plan["keep"]} == expected_keep
    assert main(argv[:-1] + ["--dry-run"]) == 0
    assert "would delete 8 runs" in capsys.readouterr().out
    assert archived_keys(client, bucket) == before  # a dry run deletes nothing

    assert main(argv) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["delete"] == plan["delete"] and done["deleted"] == len(expected_delete)
    after = archived_keys(client, bucket)
    for x in lines:
        prefix = x["archive_url"].split("/", 3)[3]
        present = {k for k in before if k.startswith(prefix)}
        assert (present & after == set()) if x["run_id"] in expected_delete else (present <= after)
    remaining = {x["run_id"] for x in index.load_records(cli_env)}
    assert remaining == {x["run_id"] for x in lines} - expected_delete
    indexed = {o["Key"] for o in index_store.list_keys(client, bucket, cli_env.key(layout.INDEX_RUNS))}
    assert indexed == {cli_env.key(layout.index_key(r)) for r in remaining}

    # a count is idempotent (a percentage is of the runs present now, so it would shrink them again)
    count = ["store", "prune", "--keep-top", "2", "--older-than", "180d", "--json"]
    assert main(count) == 0 and json.loads(capsys.readouterr().out)["deleted"] > 0
    assert main(count) == 0 and json.loads(capsys.readouterr().out)["delete"] == []


def test_prune_per_project_and_counts(old_and_new_runs, cli_env, capsys):
    assert main(["store", "prune", "--keep-top", "2", "--older-than", "180d", "--project", "pcb", "--dry-run",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["keep"]) == 2  # one group: the whole project, across models
    best = sorted((x for x in old_and_new_runs if x["map50_95"] is not None and x["run_id"] in
                   {y["run_id"] for y in plan["keep"] + plan["delete"]}), key=lambda x: -x["map50_95"])[:2]
    assert {x["run_id"] for x in plan["keep"]} == {x["run_id"] for x in best}
    assert main(["store", "prune", "--keep-top", "2", "--older-than", "180d", "--project", "other", "--dry-run",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["delete"] == []


@pytest.mark.parametrize("text, expected", [("10%", (10.0, True)), ("5", (5.0, False)), ("12.5 %", (12.5, True))])
def test_parse_keep(text, expected):
    assert retention.parse_keep(text) == expected


@pytest.mark.parametrize("text", ["ten", "150%", "-3", ""])
def test_parse_keep_errors(text):
    with pytest.raises(ConfigError, match="--keep-top"):
        retention.parse_keep(text)
