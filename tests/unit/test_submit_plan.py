"""One plan for every submission: ``--dry-run`` and the real command agree on every input.

The real command runs with a PATH that has no Slurm, so an input the checks accept fails
only at the submission step (after every check, with its folders removed again), and an
input they refuse fails the same way, with the same line, as its dry run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slurm_yolo.config import load_config
from slurm_yolo.errors import ConfigError
from slurm_yolo.launcher import submit as launcher
from slurm_yolo.runfolder import ARRAY_JSON, PLACEMENT, RUN_JSON, SWEEPS_DIR

REPO = Path(__file__).resolve().parents[2]
PLACEMENT_KEYS = {"run_id", "task", "project", "model_name", "archive_url"}


@pytest.fixture
def no_slurm_env(tmp_path):
    """A user's shell without Slurm on PATH, without S3 credentials, without a site config."""
    empty = tmp_path / "no-slurm-bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "SLURM_"))}
    env.update(PATH=str(empty), HOME=str(tmp_path / "home"), SLURM_YOLO_SITE_CONFIG=str(tmp_path / "no-site.yaml"))
    return env


def run_cli(args, env):
    return subprocess.run([sys.executable, "-m", "slurm_yolo.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=60)


def _site(tmp_path, env):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"allowed_prefix": "s3://elsewhere/runs/{user}/", "index_url": "s3://elsewhere/index/"}))
    env["SLURM_YOLO_SITE_CONFIG"] = str(site)


def _run_folder_taken(tmp_path, env):  # noqa: ARG001 - one signature for every setup
    (tmp_path / "runs" / "ci-1").mkdir(parents=True)


def _runs_root_is_a_file(tmp_path, env):  # noqa: ARG001
    (tmp_path / "runs").write_text("not a folder")


# (id, command words, setup, exit code of both, a fragment of the one error line)
REFUSED = [
    ("local-two-nodes", ["submit", "--executor", "local", "--set", "slurm.nodes=2"], None, 2, "needs Slurm"),
    ("sync-without-credentials", ["submit", "--set", "archive.sync_every=1m"], None, 2,
     "in-training sync needs your S3 credentials"),
    ("bad-run-id", ["submit", "--run-id", "../evil"], None, 2, "is not a valid name"),
    ("given-run-folder-exists", ["submit", "--run-id", "ci-1"], _run_folder_taken, 2, "already exists"),
    ("outside-allowed-prefix", ["submit"], _site, 2, "outside this site's allowed prefix"),
    ("runs-root-is-a-file", ["submit"], _runs_root_is_a_file, 2, "check runs_root"),
    ("bad-set", ["submit", "--set", "slurm.gpu=1"], None, 2, "did you mean 'gpus'"),
    ("unknown-executor", ["submit", "--executor", "k8s"], None, 2, "invalid choice: 'k8s'"),
    ("sweep-over-slurm", ["sweep", "--grid", "slurm.gpus=0,1"], None, 2, "slurm.* must be the same"),
    ("sweep-bad-grid-item", ["sweep", "--grid", "train.lr0"], None, 2, "expected KEY=V1,V2"),
    ("sweep-bad-element", ["sweep", "--grid", "train.lr0=0.01,0.001", "--grid", "slurm.gpus=1,x"], None, 2,
     "slurm.gpus must be int"),
    ("sweep-local-two-nodes", ["sweep", "--grid", "train.lr0=0.01,0.001", "--executor", "local",
                               "--set", "slurm.nodes=2"], None, 2, "needs Slurm"),
    ("sweep-sync-without-credentials", ["sweep", "--grid", "train.lr0=0.01,0.001", "--set",
                                        "archive.sync_every=1m"], None, 2, "needs your S3 credentials"),
    ("sweep-outside-allowed-prefix", ["sweep", "--grid", "train.lr0=0.01,0.001"], _site, 2, "allowed prefix"),
]


def _left_behind(tmp_path) -> list[str]:
    runs = tmp_path / "runs"
    if not runs.is_dir():
        return []
    return sorted(str(p.relative_to(runs)) for p in runs.rglob("*") if p.name != "ci-1")


@pytest.mark.parametrize("words, setup, code, fragment", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_alike_with_and_without_dry_run(cfg, tmp_path, no_slurm_env, words, setup, code, fragment):
    if setup:
        setup(tmp_path, no_slurm_env)
    args = [words[0], cfg, *words[1:]]
    dry = run_cli([*args, "--dry-run"], no_slurm_env)
    real = run_cli(args, no_slurm_env)
    assert (dry.returncode, real.returncode) == (code, code), (dry.stderr, real.stderr)
    assert dry.stderr.splitlines()[-1] == real.stderr.splitlines()[-1]
    assert fragment in real.stderr and dry.stdout == real.stdout == ""
    assert _left_behind(tmp_path) == []


ACCEPTED = [
    ("submit", ["submit", "--run-id", "ci-7"]),
    ("submit-generated-id", ["submit"]),
    ("sweep", ["sweep", "--grid", "train.lr0=0.01,0.001"]),
    ("sweep-of-one", ["sweep", "--grid", "train.lr0=0.01"]),
]


@pytest.mark.parametrize("words", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted_by_the_dry_run_fails_only_at_submission(cfg, tmp_path, no_slurm_env, words):
    args = [words[0], cfg, *words[1:]]
    dry = run_cli([*args, "--dry-run", "--json"], no_slurm_env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dry_run"] is True
    real = run_cli(args, no_slurm_env)
    assert real.returncode == 1 and real.stdout == ""
    assert real.stderr.splitlines() == [real.stderr.strip()] and "Slurm is not available here" in real.stderr
    assert _left_behind(tmp_path) in ([], [SWEEPS_DIR])  # every run folder it made was removed again


DATA = REPO / "tests" / "data" / "slurm"


def _fake_slurm(tmp_path, refuse: str | None = None, epilog: bool = True) -> dict[str, str]:
    """sbatch that keeps the script it was given and accepts it (or refuses it with ``refuse``
    as its stderr), for --test-only as for a submission; nothing ever runs. scontrol shows the
    22.05 dev cluster's real config, with its slurm-yolo epilog or (``epilog=False``) without;
    the user has no crontab."""
    fake = tmp_path / "fake-slurm"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    shown = DATA / ("show_config.txt" if epilog else "show_config_no_epilog.txt")
    (fake / "scontrol").write_text(f'#!/bin/sh\n[ "$1 $2" = "show config" ] && exec cat {shown}\nexit 1\n')
    (fake / "crontab").write_text("#!/bin/sh\necho \"no crontab for $(id -un)\" >&2\nexit 1\n")
    if refuse:
        sbatch = f"#!/bin/sh\nprintf '%s\\n' {refuse!r} >&2\nexit 1\n"
    else:
        sbatch = (f'#!/bin/sh\nif [ "$1" = --test-only ]; then cp "$2" {tmp_path}/tested.sh; '
                  f'echo "sbatch: {ESTIMATE}" >&2; exit 0; fi\n'
                  f'cp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    (fake / "sbatch").write_text(sbatch)
    for f in fake.iterdir():
        f.chmod(0o755)
    conf = tmp_path / "slurm.conf"  # a client config exists: the dry run asks sbatch
    conf.write_text("ClusterName=fake\n")
    return {**os.environ, "PATH": f"{fake}:/usr/bin:/bin", "SLURM_CONF": str(conf)}


ESTIMATE = "Job 4243 to start at 2026-12-03T13:31:49 using 1 processors on nodes vm in partition debug"


def test_the_dry_run_script_is_what_sbatch_gets(cfg, tmp_path):
    env = _fake_slurm(tmp_path)
    dry = run_cli(["submit", cfg, "--run-id", "ci-9", "--dry-run", "--json"], env)
    assert dry.returncode == 0, dry.stderr
    shown = json.loads(dry.stdout)
    real = run_cli(["submit", cfg, "--run-id", "ci-9", "--json"], env)
    assert real.returncode == 0, real.stderr
    handle = json.loads(real.stdout)
    assert (tmp_path / "submitted.sh").read_text() == shown["script"] == (tmp_path / "tested.sh").read_text()
    assert shown["slurm_says"] == ESTIMATE  # what sbatch --test-only answered, its prefix dropped
    assert handle["job_id"] == "4242"
    assert {k: shown[k] for k in ("run_id", "run_dir", "archive_url")} == \
        {k: handle[k] for k in ("run_id", "run_dir", "archive_url")}
    run_dir = Path(handle["run_dir"])
    record = json.loads((run_dir / RUN_JSON).read_text())
    placement = json.loads((run_dir / PLACEMENT).read_text())
    assert placement == {k: record[k] for k in PLACEMENT_KEYS}
    assert record["slurm"]["job_id"] == "4242"


def test_the_sweep_dry_run_script_is_what_sbatch_gets(cfg, tmp_path, monkeypatch):
    env = _fake_slurm(tmp_path)
    config = load_config(cfg, cwd=tmp_path)
    configs, elements = launcher.sweep_configs(cfg, {"train.lr0": [0.01, 0.001, 0.0001]})
    p = launcher.plan(configs, "slurm", sweep=True, elements=elements)
    assert not config.runs_root.exists()  # planning created nothing
    monkeypatch.setenv("PATH", env["PATH"])
    handles = launcher.execute(p, job=print)
    assert (tmp_path / "submitted.sh").read_text() == p.script and "#SBATCH --array=0-2%3" in p.script
    assert [h.job_id for h in handles] == ["4242_0", "4242_1", "4242_2"]
    assert [h.run_dir for h in handles] == [str(r.run_dir) for r in p.runs]
    array = json.loads((p.sweep_dir / ARRAY_JSON).read_text())
    assert array == {"sweep_id": p.sweep_id, "runs": {str(i): h.run_dir for i, h in enumerate(handles)}}
    for h in handles:
        assert set(json.loads((Path(h.run_dir) / PLACEMENT).read_text())) == PLACEMENT_KEYS


def test_a_sweep_of_one_is_a_single_job_as_submitit_sends_it(cfg):
    configs, elements = launcher.sweep_configs(cfg, {"train.lr0": [0.01]})
    p = launcher.plan(configs, "slurm", sweep=True, elements=elements)
    assert "--array" not in p.script and f"slurm-yolo:v1:{p.sweep_dir}" in p.script


def test_python_api_and_plan_refuse_alike(cfg):
    config = load_config(cfg)
    for call in (lambda: launcher.plan(config, "k8s"), lambda: launcher.submit(config, job=print, executor="k8s")):
        with pytest.raises(ConfigError, match="--executor 'k8s': choose one of slurm, local"):
            call()
    for call in (lambda: launcher.plan_sweep(cfg, {"slurm.gpus": [0, 1]}),
                 lambda: launcher.sweep(cfg, {"slurm.gpus": [0, 1]}, job=print)):
        with pytest.raises(ConfigError, match="one job array has one shape"):
            call()
    assert not config.runs_root.exists()


def test_a_drawn_id_taken_after_planning_is_drawn_again(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_slurm(tmp_path)["PATH"])
    config = load_config(cfg)
    p = launcher.plan(config, "slurm")
    taken = config.runs_root / p.runs[0].run_id
    taken.mkdir(parents=True)  # another submit got there first
    (handle,) = launcher.execute(p, job=print)
    assert handle.run_id != p.runs[0].run_id and not any(taken.iterdir())
    # what was submitted names the folder that was made, not the planned one
    assert f"slurm-yolo:v1:{handle.run_dir}" in (tmp_path / "submitted.sh").read_text()


def test_what_sbatch_refuses_the_dry_run_refuses_alike(cfg, tmp_path):
    env = _fake_slurm(tmp_path, refuse="sbatch: error: invalid partition specified: debug")
    dry = run_cli(["submit", cfg, "--dry-run"], env)
    real = run_cli(["submit", cfg], env)
    assert dry.returncode == real.returncode == 2
    assert dry.stderr.splitlines() == real.stderr.splitlines() == [
        "slurm-yolo: error: sbatch refused the job: invalid partition specified: debug; check slurm.partition "
        "(`sinfo -s` lists this cluster's partitions); nothing was submitted"]
    assert _left_behind(tmp_path) == []


def test_without_a_slurm_config_the_dry_run_does_not_ask(cfg, tmp_path):
    env = _fake_slurm(tmp_path)
    del env["SLURM_CONF"]
    if any(os.path.isfile(c) for c in launcher.SLURM_CONF_DEFAULTS):
        pytest.skip("this machine has a Slurm client config in a default place")
    dry = run_cli(["submit", cfg, "--dry-run"], env)
    assert dry.returncode == 0 and "Slurm not asked" in dry.stderr
    assert not (tmp_path / "tested.sh").exists()


# ---------------------------------------------------------------------------------------
# What the record starts with, for every task: the selection metric and the model's lineage.


@pytest.mark.parametrize("task, model, column", [
    ("detect", "yolov8n.yaml", "metrics/mAP50-95(B)"), ("segment", "yolov8n-seg.yaml", "metrics/mAP50-95(M)"),
    ("pose", "yolo11n-pose.yaml", "metrics/mAP50-95(P)"), ("obb", "yolo26n-obb.yaml", "metrics/mAP50-95(B)"),
    ("classify", "yolov8n-cls.yaml", "metrics/accuracy_top1"), ("semantic", "yolo26n-sem.yaml", "metrics/mIoU"),
    ("depth", "yolo26n-depth.yaml", "metrics/delta1"),
])
def test_the_plan_records_the_tasks_fitness_metric_and_dataset(cfg, tmp_path, task, model, column):
    from slurm_yolo.synthetic import make_task_dataset

    data = make_task_dataset(tmp_path / "data" / task, task, n_train=2, n_val=2, size=32)  # detect: its preset
    config = load_config(cfg, [f"run.task={task}", f"train.model={model}", f"train.data={data}"])
    (run,) = launcher.plan(config, "slurm").runs
    assert run.record["task"] == task and run.record["fitness_metric"] == column
    assert run.record["model"] == {"name": model, "path": None, "sha256": None, "size": None}
    assert run.record["dataset"]["fingerprint"] and run.record["dataset"]["files"] == {"classify": 4, "detect": 128}.get(task, 8)
    assert not config.runs_root.exists()


def test_a_local_pt_is_recorded_with_its_sha256(cfg, tmp_path):
    import hashlib

    weights = tmp_path / "weights dir" / "start.pt"  # a space in the path, as users' folders have
    weights.parent.mkdir()
    content = os.urandom(300_000)
    weights.write_bytes(content)
    config = load_config(cfg, [f"train.model={weights}"])
    (run,) = launcher.plan(config, "slurm").runs
    assert run.record["model"] == {"name": "start.pt", "path": str(weights),
                                   "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    assert run.record["config"]["train"]["model"] == str(weights)


def test_a_local_pt_is_recorded_in_the_run_json_submitted(cfg, tmp_path):
    weights = tmp_path / "start.pt"
    weights.write_bytes(b"weights")
    env = _fake_slurm(tmp_path)
    real = run_cli(["submit", cfg, "--run-id", "ci-pt", "--json", "--set", f"train.model={weights}"], env)
    assert real.returncode == 0, real.stderr
    record = json.loads((Path(json.loads(real.stdout)["run_dir"]) / RUN_JSON).read_text())
    assert record["model"]["path"] == str(weights) and record["model"]["size"] == 7
    assert record["fitness_metric"] == "metrics/mAP50-95(B)"


def test_a_classify_folder_submits_and_a_missing_pt_is_refused(cfg, tmp_path, no_slurm_env):
    from slurm_yolo.synthetic import make_task_dataset

    folder = make_task_dataset(tmp_path / "cls", "classify", n_train=3, n_val=3, size=32)
    ok = run_cli(["submit", cfg, "--dry-run", "--json", "--set", "run.task=classify", "--set",
                  "train.model=yolo11n-cls.yaml", "--set", f"train.data={folder}"], no_slurm_env)
    assert ok.returncode == 0, ok.stderr
    missing = run_cli(["submit", cfg, "--dry-run", "--set", "train.model=yolov8n.pt"], no_slurm_env)
    assert missing.returncode == 2 and "does not download weights" in missing.stderr
    assert _left_behind(tmp_path) == []


# ---------------------------------------------------------------------------------------
# User mode: no slurm-yolo epilog on the cluster, so the job archives itself.


def _user_mode_env(tmp_path) -> dict[str, str]:
    env = _fake_slurm(tmp_path, epilog=False)
    env.update(AWS_ACCESS_KEY_ID="AKIA-USER", AWS_SECRET_ACCESS_KEY="secret", SLURM_YOLO_INDEX="s3://bucket/index/",
               SLURM_YOLO_SITE_CONFIG=str(tmp_path / "no-site.yaml"), HOME=str(tmp_path / "home"))
    return env


def test_user_mode_says_so_and_the_job_archives_itself(cfg, tmp_path):
    env = _user_mode_env(tmp_path)
    dry = run_cli(["submit", cfg, "--run-id", "um-1", "--dry-run", "--json"], env)
    assert dry.returncode == 0, dry.stderr
    assert "this cluster has no slurm-yolo epilog" in dry.stderr
    assert "NOT installed: run `slurm-yolo reconcile --user --install`" in dry.stderr
    shown = json.loads(dry.stdout)
    real = run_cli(["submit", cfg, "--run-id", "um-1", "--json"], env)
    assert real.returncode == 0, real.stderr
    assert "this cluster has no slurm-yolo epilog" in real.stderr
    script = (tmp_path / "submitted.sh").read_text()
    assert script == shown["script"]
    archive = f"-m slurm_yolo.epilog.usermode archive {json.loads(real.stdout)['run_dir']}"
    assert archive in script
    # The SIGTERM trap is set before srun, which runs in the background so that the trap fires
    # at once; the exit-status archive comes after it, unless the trap archived.
    lines = script.splitlines()
    srun = next(i for i, line in enumerate(lines) if line.startswith("srun "))
    assert any(line.startswith("trap ") and "--why SIGTERM' TERM" in line for line in lines[:srun])
    assert lines[srun].endswith(" &") and lines[srun + 1] == "_slurm_yolo_wait $!"
    after = [line for line in lines[srun + 2:] if line.strip() and not line.startswith("#")]
    assert "--why exit" in after[0] and after[-1] == 'exit "$_slurm_yolo_step"'


def test_with_the_epilog_the_script_is_as_before(cfg, tmp_path):
    env = _fake_slurm(tmp_path)
    dry = run_cli(["submit", cfg, "--dry-run", "--json"], env)
    assert dry.returncode == 0, dry.stderr
    assert "epilog" not in dry.stderr and "usermode" not in json.loads(dry.stdout)["script"]


@pytest.mark.parametrize("drop, fragment", [
    (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "archives the run with YOUR S3 credentials"),
    (("SLURM_YOLO_INDEX",), "set SLURM_YOLO_INDEX="),
])
def test_user_mode_refuses_a_run_it_could_not_archive_or_index(cfg, tmp_path, drop, fragment):
    env = {k: v for k, v in _user_mode_env(tmp_path).items() if k not in drop}
    for words in (["submit", cfg, "--dry-run"], ["submit", cfg]):
        proc = run_cli(words, env)
        assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
    assert _left_behind(tmp_path) == []
