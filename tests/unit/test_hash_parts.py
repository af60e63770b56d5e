"""One read, both hashes: :func:`slurm_yolo.archive.manifest.hash_fd` with the md5 of the upload
parts on worker threads gives the ETag a serial md5 gives, at the part boundaries, and the
sha256 of the bytes (the manifest's). The oracle is hashlib over the whole buffer, not hash_fd."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading

import pytest

from slurm_yolo.archive import manifest, s5cmd
from slurm_yolo.epilog import snapshot


def serial_etag(data: bytes, part: int) -> str:
    """The ETag of an upload of ``data`` in ``part``-byte parts, computed the plain way."""
    if len(data) <= part:
        return hashlib.md5(data).hexdigest()
    digests = [hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part)]
    return hashlib.md5(b"".join(digests)).hexdigest() + f"-{len(digests)}"


def hashed(data: bytes, **kw):
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        return manifest.hash_fd(f.fileno(), **kw)


def pattern(size: int) -> bytes:
    """``size`` bytes that differ from part to part (a repeated random block, shifted by a counter)."""
    block = os.urandom(1 << 20)
    out = bytearray()
    n = 0
    while len(out) < size:
        out += bytes([n % 256]) + block
        n += 1
    return bytes(out[:size])


@pytest.mark.parametrize("size", [0, s5cmd.PART_SIZE, s5cmd.PART_SIZE + 1],
                         ids=["empty", "exactly one part", "one part and one byte"])
def test_parallel_etag_at_the_real_part_boundaries(size):
    data = pattern(size)
    got = hashed(data, part_size=s5cmd.PART_SIZE, threads=snapshot.PART_THREADS)
    assert got == {"size": size, "sha256": hashlib.sha256(data).hexdigest(),
                   "etag": serial_etag(data, s5cmd.PART_SIZE)}


# Parts that are not a multiple of the read size (a chunk straddles two parts), many parts,
# a file over the size from which the parts go to threads.
@pytest.mark.parametrize("part", [manifest.CHUNK, manifest.CHUNK + 12345, 3 * manifest.CHUNK - 1])
@pytest.mark.parametrize("extra", [-1, 0, 1])
@pytest.mark.parametrize("threads", [1, 3])
def test_parallel_etag_equals_serial_across_many_parts(part, extra, threads):
    data = pattern(manifest.PARALLEL_MIN_BYTES + 3 * part + extra)
    want = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "etag": serial_etag(data, part)}
    assert hashed(data, part_size=part, threads=threads) == want
    assert hashed(data, part_size=part, threads=0) == want


def test_parts_run_on_worker_threads_and_none_is_left(monkeypatch):
    """Large enough, the parts' md5 run off the calling thread (not inline), and every worker
    has ended when hash_fd returns."""
    seen: list[str] = []
    plain = manifest._md5_of

    def spy(chunks):
        seen.append(threading.current_thread().name)
        return plain(chunks)

    monkeypatch.setattr(manifest, "_md5_of", spy)
    part = manifest.CHUNK
    data = pattern(manifest.PARALLEL_MIN_BYTES + part // 2)
    assert hashed(data, part_size=part, threads=2)["etag"] == serial_etag(data, part)
    assert len(seen) == len(data) // part + 1 and all(name.startswith("md5") for name in seen)
    assert not [t for t in threading.enumerate() if t.name.startswith("md5")]
    seen.clear()
    hashed(pattern(manifest.PARALLEL_MIN_BYTES - 1), part_size=part, threads=2)
    assert seen == []  # a smaller file is hashed inline: no thread for it


def test_copy_and_sha256_with_parallel_parts(tmp_path):
    """The copy beside the hashes is byte for byte what was hashed, and the descriptor's
    offset is not used (pread): a second hash of the same descriptor gives the same answer."""
    data = pattern(manifest.PARALLEL_MIN_BYTES + 5 * manifest.CHUNK + 7)
    src = tmp_path / "src"
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    out = os.open(tmp_path / "copy", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.lseek(fd, 12345, os.SEEK_SET)
        first = manifest.hash_fd(fd, copy_to=out, part_size=2 * manifest.CHUNK, threads=2)
        again = manifest.hash_fd(fd, part_size=2 * manifest.CHUNK, threads=2)
    finally:
        os.close(fd)
        os.close(out)
    assert (tmp_path / "copy").read_bytes() == data
    assert first == again == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                              "etag": serial_etag(data, 2 * manifest.CHUNK)}


def test_no_etag_without_a_part_size():
    data = pattern(manifest.PARALLEL_MIN_BYTES + 1)
    assert hashed(data, threads=2) == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
