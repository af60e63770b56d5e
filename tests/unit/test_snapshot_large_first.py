"""The snapshot's two passes: large files are handed to the hashing threads before the small
files are copied, each file is taken once, skips are said once, and a large file's hash waits
for the store's answer on whether its ETag is wanted (while the small files do not)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from slurm_yolo.archive import s5cmd
from slurm_yolo.epilog import snapshot


def run_folder(root: Path) -> Path:
    src = root / "run"
    (src / "a_images").mkdir(parents=True)
    (src / "weights").mkdir()
    for i in range(20):
        (src / "a_images" / f"{i}.jpg").write_bytes(os.urandom(2000))
    (src / "weights" / "best.pt").write_bytes(os.urandom(snapshot.DIRECT_MIN_BYTES + 3))
    (src / "zz.link").symlink_to("/etc/passwd")
    return src


def copy(src: Path, dest: Path, etag_wanted) -> snapshot.Snapshot:
    fd = snapshot.open_dir_nofollow(str(src), os.getuid())
    try:
        return snapshot.copy_tree(fd, os.getuid(), dest, deadline=time.monotonic() + 30, direct_root=str(src),
                                  etag_wanted=etag_wanted)
    finally:
        os.close(fd)


def test_large_file_is_taken_before_the_small_ones_and_once(tmp_path):
    src = run_folder(tmp_path)
    asked: list[str] = []
    lock = threading.Lock()
    large_seen = threading.Event()
    before_first_small: list[bool] = []

    def wanted(rel: str, size: int) -> bool:
        with lock:
            asked.append(rel)
        if rel == "weights/best.pt":
            large_seen.set()
        elif not before_first_small:  # the first small file: was the large one handed out already?
            before_first_small.append(large_seen.wait(5))
        return False

    snap = copy(src, tmp_path / "out", wanted)
    # Sorted, weights/ comes after every image: the first pass hands the large file out first.
    assert before_first_small == [True]
    assert asked.count("weights/best.pt") == 1 and len(asked) == 21
    assert snap.direct.keys() == {"weights/best.pt"} and len(snap.files) == 21
    assert snap.skipped == ["zz.link: symlink"]  # the first pass says nothing
    data = (src / "weights" / "best.pt").read_bytes()
    assert snap.files["weights/best.pt"] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_large_file_hash_waits_for_the_answer_small_ones_do_not(tmp_path):
    """Until the listing answers (None), small files get their ETag anyway; the large file's
    hashing thread waits, then follows the answer (here: held, so the ETag is computed)."""
    src = run_folder(tmp_path)
    answered = threading.Event()
    calls: dict[str, int] = {}

    def wanted(rel: str, size: int) -> bool | None:
        calls[rel] = calls.get(rel, 0) + 1
        if rel == "a_images/19.jpg":
            answered.set()  # the listing answers once the walk is at the last image
        return True if answered.is_set() and rel == "weights/best.pt" else (None if not answered.is_set() else False)

    snap = copy(src, tmp_path / "out", wanted)
    assert calls["weights/best.pt"] > 1  # asked again until answered
    data = (src / "weights" / "best.pt").read_bytes()
    part = hashlib.md5(data[:s5cmd.PART_SIZE]).hexdigest()
    assert snap.etags["weights/best.pt"] == part  # one part: the md5 of the bytes
    assert "a_images/0.jpg" in snap.etags  # None: taken as yes by the walk
    assert "a_images/19.jpg" not in snap.etags  # answered no
