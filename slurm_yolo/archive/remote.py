"""What the store already holds under a run's prefix, and whether a local file is that object.

The rule that lets an upload skip a file (the epilog at job end and on a requeue, the job's
in-training sync): a file is not sent again when the store holds an object at its key of the
same size whose ETag is the one this upload would produce (:func:`unchanged`). Both sides of
the comparison are computed by parties the job's user does not control: the ETag by the store
from the bytes it received (an md5 for a single PUT, the md5 of the parts' md5s plus ``-N``
for a multipart upload; checked on SeaweedFS 4.48 and moto 5), the local one by the caller
from the descriptor it opened and is about to hash for the manifest
(:func:`slurm_yolo.archive.manifest.hash_fd` with ``part_size``). Nothing the user's process
wrote (a sync record, object metadata) is believed. Every upload of the project uses the part
size :data:`slurm_yolo.archive.s5cmd.PART_SIZE`, so the expected ETag is known; an object
uploaded otherwise (another part size, a store whose ETags are not md5s, SSE-KMS) simply does
not match, and the file is uploaded again: the failure mode is a wasted upload, never a
skipped one.

One listing per run (``s5cmd ls``: one ListObjectsV2 request per 1000 keys) gives the size and
ETag of every object under the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from slurm_yolo.archive import s5cmd
from slurm_yolo.store import Store


@dataclass(frozen=True)
class RemoteObject:
    """One object under a run's prefix, as the store lists it.

    Attributes:
        size: bytes.
        etag: the store's ETag, without quotes, lower case.
    """

    size: int
    etag: str


def listing_argv(store: Store, url: str) -> list[str]:
    """``s5cmd --json ... ls "<url>*"``: every object under the prefix ``url`` (ends with ``/``)."""
    return s5cmd.base_argv(store, workers=4, retries=3) + ["ls", url.rstrip("/") + "/*"]


def parse_listing(outcomes: Iterable[s5cmd.Outcome], url: str) -> dict[str, RemoteObject]:
    """Archive path (the key below ``url``) → object, from the classified lines of ``s5cmd ls``.

    Lines of other prefixes, folders, and objects the store gave no ETag are left out (an
    object left out is uploaded: the safe side).
    """
    prefix = url.rstrip("/") + "/"
    found: dict[str, RemoteObject] = {}
    for o in outcomes:
        key = o.source or ""
        if not o.ok or o.operation != "ls" or o.kind not in (None, "file") or not key.startswith(prefix):
            continue
        etag = (o.etag or "").strip().strip('"').lower()
        rel = key[len(prefix):]
        if rel and etag:
            # s5cmd leaves "size" out of an empty object's line.
            found[rel] = RemoteObject(int(o.size or 0), etag)
    return found


def listing(store: Store, url: str, *, deadline: float | None = None, timeout: float = 60) -> dict[str, RemoteObject]:
    """Every object under the prefix ``url`` (``s3://bucket/.../<run_id>/``): archive path → object.

    An empty prefix is an empty listing.

    Raises:
        StoreError: the listing failed (unreachable, denied, no bucket, timed out); callers
            that only want to skip uploads catch it and upload everything.
    """
    result = s5cmd.run(listing_argv(store, url), store, deadline=deadline, timeout=timeout)
    s5cmd.check_s5cmd(result, f"list {url}", allow_empty=True)
    return parse_listing(result.outcomes, url)


def unchanged(local: Mapping[str, Any], remote: RemoteObject | None) -> bool:
    """Whether the store already holds exactly this file: same size and the ETag this upload
    would give it.

    Args:
        local: the file's ``{"size", "etag", ...}`` from
            :func:`slurm_yolo.archive.manifest.hash_fd` with ``part_size=s5cmd.PART_SIZE``
            (``etag`` ``None`` or missing: unknown, so not unchanged).
        remote: the object at the file's key (``None``: there is none).
    """
    etag = local.get("etag")
    return remote is not None and bool(etag) and local.get("size") == remote.size and etag == remote.etag


def to_upload(local: Mapping[str, Mapping[str, Any]], remote: Mapping[str, RemoteObject]) -> list[str]:
    """The archive paths of ``local`` (path → meta, as :func:`unchanged` takes) that the store
    does not already hold, in path order."""
    return sorted(rel for rel, meta in local.items() if not unchanged(meta, remote.get(rel)))
