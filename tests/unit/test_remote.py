"""The skip rule's pure parts: the listing parser on real ``s5cmd ls --json`` lines, the ETag
computation, and when a file counts as unchanged. (Against real stores: tests/s3/test_no_reupload.py.)"""

from __future__ import annotations

import hashlib
import os
import tempfile

import pytest

from slurm_yolo.archive import manifest, remote, s5cmd

# Captured from s5cmd 2.3.0 against SeaweedFS 4.48 (ls of s3://bkt/p/*): an empty object's line
# has no "size"; a missing prefix is an error line.
LS_STDOUT = """\
{"key":"s3://bkt/p/big.bin","etag":"2f553bf6be3f5c511fe5a4440233044e-3","last_modified":"2026-12-03T16:42:14Z","type":"file","size":12582919,"storage_class":"STANDARD"}
{"key":"s3://bkt/p/empty.bin","etag":"d41d8cd98f00b204e9800998ecf8427e","last_modified":"2026-12-03T16:42:12Z","type":"file","storage_class":"STANDARD"}
{"key":"s3://bkt/p/sub/deeper/x y.txt","etag":"49f68a5c8493ec2c0bf489821c21fc3b","last_modified":"2026-12-03T16:43:00Z","type":"file","size":2,"storage_class":"STANDARD"}
{"key":"s3://bkt/other/z","etag":"49f68a5c8493ec2c0bf489821c21fc3b","type":"file","size":2}
"""
LS_EMPTY_STDERR = '{"operation":"ls","command":"ls s3://bkt/nothing/*","error":"no object found"}\n'


def test_parse_listing_of_real_lines():
    held = remote.parse_listing(s5cmd.parse_output(LS_STDOUT, ""), "s3://bkt/p/")
    assert held == {
        "big.bin": remote.RemoteObject(12582919, "2f553bf6be3f5c511fe5a4440233044e-3"),
        "empty.bin": remote.RemoteObject(0, "d41d8cd98f00b204e9800998ecf8427e"),
        "sub/deeper/x y.txt": remote.RemoteObject(2, "49f68a5c8493ec2c0bf489821c21fc3b"),
    }
    assert remote.parse_listing(s5cmd.parse_output("", LS_EMPTY_STDERR), "s3://bkt/nothing/") == {}


def _etag(data: bytes, part: int) -> str | None:
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        return manifest.hash_fd(f.fileno(), part_size=part)["etag"]


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 2048, 2049, 5000])
def test_etag_single_and_multipart(size):
    part = 1024
    data = os.urandom(size)
    if size <= part:
        want = hashlib.md5(data).hexdigest()
    else:
        parts = [hashlib.md5(data[i:i + part]).digest() for i in range(0, size, part)]
        want = hashlib.md5(b"".join(parts)).hexdigest() + f"-{len(parts)}"
    assert _etag(data, part) == want


def test_etag_unknown_past_the_part_limit():
    assert manifest.s3_etag(manifest.MAX_PARTS * 10, [b"x"] * manifest.MAX_PARTS, 10) is None


@pytest.mark.parametrize("local, held, same", [
    ({"size": 2, "etag": "aa"}, remote.RemoteObject(2, "aa"), True),
    ({"size": 2, "etag": "aa"}, remote.RemoteObject(3, "aa"), False),  # other size
    ({"size": 2, "etag": "aa"}, remote.RemoteObject(2, "bb"), False),  # other bytes
    ({"size": 2, "etag": None}, remote.RemoteObject(2, "aa"), False),  # ETag not computed
    ({"size": 2}, remote.RemoteObject(2, "aa"), False),
    ({"size": 2, "etag": "aa"}, None, False),  # not in the store
])
def test_unchanged(local, held, same):
    assert remote.unchanged(local, held) is same


def test_to_upload_lists_what_the_store_lacks():
    local = {"a": {"size": 1, "etag": "x"}, "b": {"size": 1, "etag": "y"}, "c": {"size": 1}}
    held = {"a": remote.RemoteObject(1, "x"), "b": remote.RemoteObject(1, "z")}
    assert remote.to_upload(local, held) == ["b", "c"]
