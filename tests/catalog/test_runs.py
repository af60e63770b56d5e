"""show, compare, fetch (verified) and reproduce against the loopback store."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.helpers.catalog_seed import archive_run, results_csv, run_json
from slurm_yolo.catalog import runs
from slurm_yolo.cli import main
from slurm_yolo.errors import ConfigError, RunNotFound

RUN_A, RUN_B = "20261101_120000_aaaaaa", "20261102_120000_bbbbbb"


def args_yaml(lr0: float, batch: int, run_id: str) -> bytes:
    return f"task: detect\nmode: train\nmodel: yolov8n.yaml\nepochs: 3\nlr0: {lr0}\nbatch: {batch}\nname: {run_id}\n" \
           f"save_dir: /runs/{run_id}\nimgsz: 64\n".encode()


@pytest.fixture
def archived(cli_env, client, bucket, tmp_path):
    """Two archived runs (full bundles) and a dataset that still exists."""
    data = tmp_path / "data.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nnames: {0: a}\n")
    out = {}
    for run_id, lr0, batch, curve in ((RUN_A, 0.01, 16, [0.1, 0.3, 0.5]), (RUN_B, 0.001, 16, [0.2, 0.25])):
        rec = run_json(run_id, bucket, data=str(data), lr0=lr0, map50_95=max(curve))
        files = {"results.csv": results_csv(curve), "args.yaml": args_yaml(lr0, batch, run_id),
                 "weights/best.pt": b"\x00best" * 1000, "weights/last.pt": b"\x00last" * 1000,
                 "train_batch0.jpg": b"\xff\xd8jpeg", "train.log": "épochs ünïcode\n".encode()}
        archive_run(client, bucket, rec, files, cli_env.index_url)
        out[run_id] = (rec, files)
    return out


def test_show_json_is_the_archived_record(archived, capsys):
    assert main(["runs", "show", RUN_A, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == archived[RUN_A][0]
    assert main(["runs", "show", RUN_A]) == 0
    out = capsys.readouterr().out
    assert RUN_A in out and "config:" in out and "lr0: 0.01" in out


def test_unknown_run_is_run_not_found(archived, capsys):
    assert main(["runs", "show", "20200101_000000_nonono"]) == 1
    assert "runs list" in capsys.readouterr().err


def test_compare_differing_hparams_and_metrics(archived, cli_env, capsys):
    comparison = runs.compare(cli_env, [RUN_A, RUN_B])
    assert comparison.hparams == {"lr0": [0.01, 0.001]}  # batch equal; name/save_dir differ by construction
    assert comparison.metrics["map50_95"] == [0.5, 0.25]
    assert comparison.curves == {RUN_A: [(1, 0.1), (2, 0.3), (3, 0.5)], RUN_B: [(1, 0.2), (2, 0.25)]}
    assert runs.compare(cli_env, [RUN_A, RUN_B], ["batch", "imgsz"]).hparams == {"batch": [16, 16], "imgsz": [64, 64]}
    assert main(["runs", "compare", RUN_A, RUN_B, "--keys", "lr0,batch", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hparams"] == {"lr0": [0.01, 0.001], "batch": [16, 16]}
    assert main(["runs", "compare", RUN_A, RUN_B]) == 0
    assert "lr0" in capsys.readouterr().out


def test_compare_plot(archived, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    assert main(["runs", "compare", RUN_A, RUN_B, "--plot", str(png), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fetch_verifies_every_file(archived, weird_path, capsys):
    dest = weird_path / "bundle"
    assert main(["runs", "fetch", RUN_A, "--to", str(dest), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    files = archived[RUN_A][1]
    assert result["files"] == len(files) and result["bytes"] == sum(len(v) for v in files.values())
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    assert (dest / "run.json").is_file() and (dest / "MANIFEST.json").is_file()


def test_fetch_detects_a_corrupted_object(archived, client, bucket, tmp_path, capsys):
    rec = archived[RUN_A][0]
    key = rec["archive_url"].split("/", 3)[3] + "weights/best.pt"
    client.put_object(Bucket=bucket, Key=key, Body=b"\x00best" * 999 + b"\x00bEst")  # same size, one byte differs
    assert main(["runs", "fetch", RUN_A, "--to", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "weights/best.pt" in err and "sha256 mismatch" in err


def test_fetch_detects_a_missing_object(archived, client, bucket, tmp_path, capsys):
    key = archived[RUN_B][0]["archive_url"].split("/", 3)[3] + "train.log"
    client.delete_object(Bucket=bucket, Key=key)
    assert main(["runs", "fetch", RUN_B, "--to", str(tmp_path / "out")]) == 1
    assert "train.log: missing" in capsys.readouterr().err


def test_reproduce_submits_the_original_config_plus_overrides(archived, cli_env):
    submitted = []

    class Handle:
        def to_dict(self):
            return {"run_id": "20261122_000000_newrun"}

    def fake_submit(config, **kw):
        submitted.append((config, kw))
        return Handle()

    result = runs.reproduce(cli_env, RUN_A, ["train.epochs=5", "slurm.mem=8G"], executor="local", submit=fake_submit,
                            code_now=lambda _dir: {"commit": "b" * 40, "dirty": False})
    (config, kw), = submitted
    expected = copy.deepcopy(archived[RUN_A][0]["config"])
    expected["train"]["epochs"] = 5
    expected["slurm"]["mem"] = "8G"
    expected["slurm"].setdefault("nodes", 1)  # a key added since the run was archived: its default
    assert config.to_dict() == expected == result.config
    assert kw == {"executor": "local", "reproduces": RUN_A}
    assert result.handle == {"run_id": "20261122_000000_newrun"}
    assert any("git checkout aaaaaaaaaaaa" in w for w in result.warnings)


def test_reproduce_cli_dry_run_warns_about_the_environment(archived, capsys):
    assert main(["reproduce", RUN_B, "--set", "train.lr0=0.02", "--dry-run", "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["run"] is None and result["config"]["train"]["lr0"] == 0.02
    assert "torch is" in out.err and "used 1.13.0" in out.err  # archived torch 1.13.0 is not what is here


def test_reproduce_needs_the_dataset(archived, cli_env, tmp_path):
    (tmp_path / "data.yaml").unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        runs.reproduce(cli_env, RUN_A, dry_run=True)


def test_reproduction_warnings_table():
    rec = {"code": {"repo": "/r", "commit": "c" * 40, "dirty": True},
           "environment": {"python": "3.11.2", "torch": "2.14.1", "ultralytics": "8.4.190"}}
    here = {"python": "3.11.2", "torch": "2.14.1", "ultralytics": "8.4.191"}
    warnings = runs.reproduction_warnings(rec, here, {"commit": "c" * 40})
    assert len(warnings) == 2 and "uncommitted" in warnings[0] and "ultralytics is 8.4.191" in warnings[1]
    assert runs.reproduction_warnings(rec, here, None)[1].startswith("not in a git repository")


@pytest.mark.parametrize("url", ["s3://b/", "s3://b/runs/other/", "s3://b/x/RUN/../", None])
def test_archive_url_must_be_the_runs_own_folder(url):
    with pytest.raises(runs.StoreError, match="archive_url"):
        runs.archive_url({"run_id": "RUN", "archive_url": url})


def test_find_run_falls_back_to_the_index(cli_env, client):
    line = {"run_id": RUN_A, "archive_url": "s3://b/x/RUN/"}
    client.put_object(Bucket=cli_env.bucket, Key=cli_env.key("INDEX.jsonl"), Body=json.dumps(line).encode())
    found = runs.find_run(cli_env, RUN_A)  # a legacy INDEX.jsonl line, read back in the index's columns
    assert {k: found[k] for k in line} == line
    with pytest.raises(RunNotFound):
        runs.find_run(cli_env, RUN_B)


def test_reproduce_uses_the_archived_commit_when_the_repo_has_it(tmp_path):
    """A model .yaml tracked in the user's repo changed after the run: reproduce trains the
    archived version, from a worktree of the archived commit, and records that commit."""
    import subprocess

    from slurm_yolo.provenance import code_version

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "model.yaml").write_text("nc: 4  # archived version\n")
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "a"], check=True)
    archived = code_version(repo)
    (repo / "model.yaml").write_text("nc: 9  # changed later\n")
    subprocess.run(git + ["commit", "-qam", "b"], check=True)
    data = tmp_path / "data.yaml"
    data.write_text("names: {0: a}\n")
    record = {"config": {"run": {"task": "detect", "project": "p", "model_name": "m"},
                         "train": {"model": str(repo / "model.yaml"), "data": str(data)},
                         "archive": {"url": "s3://b/runs/{user}/x"}, "runs_root": str(tmp_path / "runs")},
              "code": archived}
    checkout = runs.archived_code_checkout(archived, tmp_path / "runs")
    assert checkout == tmp_path / "runs" / "_code" / archived["commit"][:12]
    rebased = runs.rebase_paths(record["config"], archived["repo"], checkout)
    assert Path(rebased["train"]["model"]).read_text() == "nc: 4  # archived version\n"
    assert rebased["train"]["data"] == str(data)  # not in git: left where it is
    assert code_version(checkout)["commit"] == archived["commit"]
    assert runs.archived_code_checkout(archived, tmp_path / "runs") == checkout  # reused
    assert runs.archived_code_checkout({"repo": str(repo), "commit": "f" * 40}, tmp_path / "runs") is None
