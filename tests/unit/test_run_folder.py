"""Run folders: an exclusive mkdir decides between concurrent submits, never the ID's luck."""

from __future__ import annotations

import itertools
import json
import multiprocessing

import pytest
import yaml

from slurm_yolo.config import load_config
from slurm_yolo.errors import ConfigError, SubmitError
from slurm_yolo.launcher import submit as launcher
from slurm_yolo.launcher.submit import FRESH_ID_TRIES, make_fresh_dir, prepare_run


def _racer(parent, barrier, results):
    # Every process draws the SAME sequence r0, r1, r2, ...: each draw after the first is
    # a guaranteed collision with a faster process, so mkdir must referee every one.
    counter = itertools.count()
    barrier.wait()
    results.put(str(make_fresh_dir(parent, None, lambda: f"r{next(counter)}")))


def test_concurrent_submits_with_colliding_ids_get_distinct_folders(tmp_path):
    ctx = multiprocessing.get_context("fork")
    n = FRESH_ID_TRIES  # with n racers the last one needs n draws at worst
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(tmp_path, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sorted(got) == sorted(str(tmp_path / f"r{i}") for i in range(n))


def test_given_name_that_exists_is_an_error_and_untouched(tmp_path):
    (tmp_path / "ci-1").mkdir()
    (tmp_path / "ci-1" / "keep").write_text("x")
    with pytest.raises(ConfigError, match="already exists; choose another --run-id"):
        make_fresh_dir(tmp_path, "ci-1", lambda: "never")
    assert (tmp_path / "ci-1" / "keep").read_text() == "x"


def test_gives_up_after_the_allowed_draws(tmp_path):
    (tmp_path / "same").mkdir()
    draws = []
    with pytest.raises(SubmitError, match="no fresh run ID"):
        make_fresh_dir(tmp_path, None, lambda: draws.append(1) or "same")
    assert len(draws) == FRESH_ID_TRIES


def test_prepare_run_draws_again_and_records_the_folder_name(tmp_path, monkeypatch):
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: a}\n")
    cfg = {"run": {"task": "detect", "project": "p", "model_name": "m"},
           "train": {"model": "yolov8n.yaml", "data": "data.yaml"},
           "archive": {"url": "s3://b/runs/{user}"}, "runs_root": "runs"}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    config = load_config(tmp_path / "exp.yaml", cwd=tmp_path)
    taken = prepare_run(config)
    ids = iter([taken.name, "20261122_000000_fresh000"])
    monkeypatch.setattr(launcher, "new_run_id", lambda: next(ids))
    run_dir = prepare_run(config)
    assert run_dir.name == "20261122_000000_fresh000"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["run_id"] == run_dir.name and record["archive_url"].endswith(f"/{run_dir.name}/")
