"""The epilog's safe copy: nothing outside the run folder, nothing the user could not read."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from slurm_yolo.epilog.snapshot import Refused, copy_tree, open_dir_nofollow, valid_marker_path

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create files of other owners")


def snap(src: Path, dest: Path, uid: int | None = None, **kw):
    uid = os.getuid() if uid is None else uid
    fd = open_dir_nofollow(str(src), uid)
    try:
        return copy_tree(fd, uid, dest, deadline=time.monotonic() + 30, **kw)
    finally:
        os.close(fd)


def test_copies_tree_with_hashes(tmp_path, weird_path):
    src = weird_path / "run"
    (src / "weights").mkdir(parents=True)
    (src / "weights" / "best.pt").write_bytes(b"w" * 3000)
    (src / "results.csv").write_text("epoch\n1\n")
    (src / "ünï ;$'q.txt").write_text("x")
    s = snap(src, tmp_path / "out")
    assert set(s.files) == {"weights/best.pt", "results.csv", "ünï ;$'q.txt"}
    assert (tmp_path / "out" / "weights" / "best.pt").read_bytes() == b"w" * 3000
    assert s.files["weights/best.pt"]["size"] == 3000 and s.complete and not s.skipped
    assert oct((tmp_path / "out" / "results.csv").stat().st_mode & 0o777) == "0o600"


def test_symlinks_fifos_and_sockets_are_skipped(tmp_path):
    src = tmp_path / "run"
    src.mkdir()
    (src / "ok.txt").write_text("ok")
    (src / "shadow").symlink_to("/etc/shadow")
    (src / "dirlink").symlink_to("/etc")
    os.mkfifo(src / "fifo")  # opening it for reading would block forever
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    s = snap(src, tmp_path / "out")
    assert set(s.files) == {"ok.txt"}
    assert sorted(x.split(":")[0] for x in s.skipped) == ["dirlink", "fifo", "shadow", "sock"]
    sock.close()


@root_only
def test_device_file_is_skipped(tmp_path):
    import stat

    src = tmp_path / "run"
    src.mkdir()
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    assert snap(src, tmp_path / "out").files == {}


@root_only
def test_hard_link_to_root_file_and_other_users_files_are_skipped(tmp_path):
    src = tmp_path / "run"
    src.mkdir()
    os.chown(src, NOBODY, NOBODY)
    secret = tmp_path / "secret"
    secret.write_text("root only")
    os.chmod(secret, 0o600)
    os.link(secret, src / "hardlink")           # owned by root: the user could not read it
    (src / "mine.txt").write_text("mine")
    os.chown(src / "mine.txt", NOBODY, NOBODY)
    (src / "sub").mkdir()                          # a folder of someone else inside
    (src / "sub" / "x").write_text("x")
    s = snap(src, tmp_path / "out", uid=NOBODY)
    assert set(s.files) == {"mine.txt"}
    assert not (tmp_path / "out" / "hardlink").exists()


@root_only
def test_marker_to_another_users_folder_is_refused(tmp_path):
    src = tmp_path / "run"
    src.mkdir()
    with pytest.raises(Refused, match="belongs to uid 0"):
        open_dir_nofollow(str(src), NOBODY)


def test_symlink_in_marker_path_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(Refused, match="without following links"):
        open_dir_nofollow(str(tmp_path / "link"), os.getuid())


@pytest.mark.parametrize("path", ["relative/path", "/a/../etc", "/a/./b", "/a//b", "/a/b\n", "/a/\x00", "/a/b/"])
def test_marker_path_validation(path):
    assert not valid_marker_path(path)
    with pytest.raises(Refused):
        open_dir_nofollow(path, 0)


def test_deadline_stops_copy(tmp_path):
    src = tmp_path / "run"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_text("x")
    fd = open_dir_nofollow(str(src), os.getuid())
    s = copy_tree(fd, os.getuid(), tmp_path / "out", deadline=time.monotonic() - 1)
    os.close(fd)
    assert not s.complete and not s.files


def test_large_files_are_hashed_in_place_on_threads_without_leaking_descriptors(tmp_path):
    """Twelve checkpoints over the direct-upload size, hashed two at a time while the walk goes
    on: each hash is that file's, none is copied into the spool, every descriptor is closed."""
    import hashlib

    from slurm_yolo.epilog.snapshot import DIRECT_MIN_BYTES

    src = tmp_path / "run"
    (src / "weights").mkdir(parents=True)
    for i in range(12):
        (src / "weights" / f"epoch{i}.pt").write_bytes(bytes([i]) * (DIRECT_MIN_BYTES + i))
    (src / "results.csv").write_text("epoch\n1\n")
    before = len(os.listdir("/proc/self/fd"))
    s = snap(src, tmp_path / "out", direct_root=str(src))
    assert len(os.listdir("/proc/self/fd")) == before
    assert set(s.direct) == {f"weights/epoch{i}.pt" for i in range(12)}
    for i in range(12):
        data = bytes([i]) * (DIRECT_MIN_BYTES + i)
        assert s.files[f"weights/epoch{i}.pt"] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert not (tmp_path / "out" / "weights" / f"epoch{i}.pt").exists()
    assert (tmp_path / "out" / "results.csv").exists() and s.complete
