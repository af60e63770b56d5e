"""Pure builders of multi-node training: hostlists, the torchrun command, its environment,
the Ultralytics version check, the config key and the sbatch shape. Table tests; no torch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from slurm_yolo.commands import run_foreground
from slurm_yolo.config import resolve_config
from slurm_yolo.errors import CommandError, ConfigError, SlurmYoloError
from slurm_yolo.hostlist import expand_hostlist, first_host
from slurm_yolo.job.distributed import (NodeLaunch, multinode_trainer, node_launch, rendezvous_port, torchrun_argv,
                                        torchrun_env, ultralytics_warning, version_tuple)
from slurm_yolo.launcher.slurm_params import batch_script, make_marker, slurm_parameters

# Hostlists as Slurm prints them in SLURM_JOB_NODELIST (and `scontrol show hostnames` expands them).
HOSTLISTS = [
    ("n1", ["n1"]),
    ("n[1-3]", ["n1", "n2", "n3"]),
    ("n[1-2,7]", ["n1", "n2", "n7"]),
    ("gpu[08-11]", ["gpu08", "gpu09", "gpu10", "gpu11"]),
    ("n[1-2],gpu-a[01-02]", ["n1", "n2", "gpu-a01", "gpu-a02"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("node[9-10]-ib", ["node9-ib", "node10-ib"]),
    ("a1,b2", ["a1", "b2"]),
    ("127.0.0.1", ["127.0.0.1"]),
]


@pytest.mark.parametrize("hostlist,hosts", HOSTLISTS)
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts
    assert first_host(hostlist) == hosts[0]


def test_first_host_does_not_expand_the_rest():
    assert first_host("n[5-99999999]") == "n5"


@pytest.mark.parametrize("bad", ["", "n[1-2", "n1-2]", "n[2-1]", "n[a-b]", "n[[1]]", "n[]"])
def test_bad_hostlists_are_errors(bad):
    with pytest.raises(SlurmYoloError):
        first_host(bad)


SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "n[1-2]",
             "SLURM_RESTART_COUNT": "0", "SLURM_CPUS_PER_TASK": "8"}


@pytest.mark.parametrize("env,gpus,want", [
    (SLURM_ENV, 0, NodeLaunch(2, 1, 1, "n1:24242", "4242-0", "gloo")),
    (SLURM_ENV, 4, NodeLaunch(2, 1, 4, "n1:24242", "4242-0", "nccl")),
    ({**SLURM_ENV, "SLURM_RESTART_COUNT": "2", "SLURM_NODEID": "0"}, 1, NodeLaunch(2, 0, 1, "n1:24242", "4242-2", "nccl")),
    # Older Slurm spells them SLURM_JOB_NUM_NODES / SLURM_NODELIST.
    ({"SLURM_JOB_ID": "17", "SLURM_JOB_NUM_NODES": "3", "SLURM_NODEID": "2", "SLURM_NODELIST": "gpu[07-09]"}, 2,
     NodeLaunch(3, 2, 2, "gpu07:20017", "17-0", "nccl")),
])
def test_node_launch(env, gpus, want):
    launch = node_launch(env, gpus)
    assert launch == want
    assert launch.world_size == want.nnodes * want.nproc_per_node


@pytest.mark.parametrize("missing", ["SLURM_JOB_ID", "SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_NODELIST"])
def test_node_launch_outside_slurm_names_the_variable(missing):
    env = {k: v for k, v in SLURM_ENV.items() if k != missing}
    with pytest.raises(SlurmYoloError, match=missing):
        node_launch(env, 0)


@pytest.mark.parametrize("job_id,port", [("1", 20001), ("4242", 24242), ("123456", 23456), ("99_3", 20993)])
def test_rendezvous_port_is_below_the_ephemeral_range(job_id, port):
    assert rendezvous_port(job_id) == port and port < 32768


def test_torchrun_argv():
    launch = NodeLaunch(2, 1, 4, "n1:24242", "4242-0", "nccl")
    assert torchrun_argv("/venv/bin/python", launch, "/runs/R 1") == [
        "/venv/bin/python", "-m", "torch.distributed.run", "--nnodes=2", "--node-rank=1", "--nproc-per-node=4",
        "--rdzv-backend=c10d", "--rdzv-endpoint=n1:24242", "--rdzv-id=4242-0", "--max-restarts=0",
        "-m", "slurm_yolo.job.distributed", "/runs/R 1"]


@pytest.mark.parametrize("env,nproc,threads", [
    ({"SLURM_CPUS_PER_TASK": "8"}, 4, "2"), ({"SLURM_CPUS_PER_TASK": "2"}, 4, "1"), ({}, 1, "1"),
    ({"SLURM_CPUS_PER_TASK": "8", "OMP_NUM_THREADS": "3"}, 4, "3"),
])
def test_torchrun_env_shares_the_cpus(env, nproc, threads):
    out = torchrun_env(env, NodeLaunch(2, 0, nproc, "n1:1", "1-0", "gloo"))
    assert out["OMP_NUM_THREADS"] == threads and all(out[k] == v for k, v in env.items())


@pytest.mark.parametrize("version,parsed,warns", [
    ("8.4.190", (8, 4, 190), False), ("8.4.199", (8, 4, 199), False), ("8.4.189", (8, 4, 189), True),
    ("8.5.0", (8, 5, 0), True), ("8.3.40", (8, 3, 40), True), ("9.0.0", (9, 0, 0), True),
    ("8.4.190rc1", (8, 4, 190), False), ("8.5.0.dev1", (8, 5, 0), True),
])
def test_ultralytics_version_range(version, parsed, warns):
    assert version_tuple(version) == parsed
    assert (ultralytics_warning(version) is not None) == warns


def test_trainer_without_the_hooks_is_refused():
    class OldTrainer:
        def _setup_ddp(self):
            pass

    with pytest.raises(SlurmYoloError, match="_setup_train"):
        multinode_trainer(OldTrainer)


RAW = {
    "run": {"task": "detect", "project": "p", "model_name": "m"},
    "train": {"model": "yolov8n.yaml", "data": "/d/data.yaml"},
    "slurm": {"gpus": 4},
    "archive": {"url": "s3://b/x"},
    "runs_root": "/shared/runs",
}


def _config(**slurm):
    return resolve_config({**RAW, "slurm": {**RAW["slurm"], **slurm}}, check_paths=False)


def test_nodes_defaults_to_one_and_single_node_params_are_unchanged():
    config = _config()
    assert config.slurm["nodes"] == 1
    params = slurm_parameters(config, job_name="j", marker=make_marker("/r"))
    assert params["nodes"] == 1 and params["ntasks_per_node"] == 1 and params["gpus_per_node"] == 4


def test_two_nodes_is_two_tasks_one_per_node_and_shows_in_dry_run():
    params = slurm_parameters(_config(nodes=2), job_name="j", marker=make_marker("/r"))
    assert params["nodes"] == 2 and params["ntasks_per_node"] == 1 and params["gpus_per_node"] == 4
    script = batch_script(params, python="/venv/bin/python", folder="/r/slurm")
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "#SBATCH --gpus-per-node=4" in script


@pytest.mark.parametrize("slurm,match", [
    ({"nodes": 0}, "slurm.nodes=0 must be >= 1"),
    ({"nodes": -2}, "slurm.nodes"),
    ({"nodes": "2"}, "slurm.nodes must be int"),
    ({"nodes": 2.0}, "slurm.nodes must be int"),
    ({"nodes": True}, "slurm.nodes must be int"),
    ({"extra": {"nodes": 2}}, "slurm.extra.nodes is set by slurm-yolo"),
    ({"extra": {"ntasks-per-node": 4}}, "slurm.extra.ntasks-per-node is set by slurm-yolo"),
])
def test_bad_nodes_are_refused(slurm, match):
    with pytest.raises(ConfigError, match=match):
        _config(**slurm)


def _sig_blocked(pid: int, signum: int) -> bool:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigBlk:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    raise AssertionError("no SigBlk")


def test_run_foreground_returns_the_exit_code_and_blocks_signals_in_the_child(tmp_path):
    code = "import sys; sys.exit(int(open('/proc/self/status').read().split('SigBlk:')[1].split()[0], 16) >> 11 & 1)"
    # Bit 11 is SIGUSR2 (12): exit 1 if blocked in the child.
    assert run_foreground([sys.executable, "-c", code], "t", block_signals=(signal.SIGUSR2,)) == 1
    assert run_foreground([sys.executable, "-c", code], "t") == 0
    assert not _sig_blocked(os.getpid(), signal.SIGUSR2), "the parent's mask is restored"
    with pytest.raises(CommandError, match="not installed"):
        run_foreground([str(tmp_path / "nope")], "t")


def test_run_foreground_interrupted_terminates_the_child(tmp_path):
    """A signal handler that raises (submitit's requeue exits) must not leave the child running."""
    marker = tmp_path / "pid"
    code = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(60)"

    def interrupt(signum, frame):
        raise SystemExit(-1)

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        started = time.monotonic()
        with pytest.raises(SystemExit):
            run_foreground([sys.executable, "-c", code], "t", grace_s=5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - started < 10
    pid = int(marker.read_text())
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0, "child still alive"
