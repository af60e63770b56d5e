"""Where a run index is: the store and the ``s3://bucket/prefix/`` its objects live under.

One frozen value, passed to both sides of the index: the epilog's writer
(:mod:`slurm_yolo.archive.index_store`), compaction (:mod:`slurm_yolo.archive.index_compact`,
which the drain runs) and the catalog's readers (:mod:`slurm_yolo.catalog`). It names a
location, nothing more: it holds no connection and no records.
"""

from __future__ import annotations

from dataclasses import dataclass

from slurm_yolo.store import Store, split_url


@dataclass(frozen=True)
class IndexLocation:
    """Where the index is and how to reach the store.

    Attributes:
        store: connection settings.
        index_url: ``s3://bucket/prefix/`` (always ends with ``/``; build it with :meth:`at`).
        allowed_prefix: the site's archive prefix with ``{user}`` (``s3://b/runs/{user}/``), when
            known: compaction then refuses a pending update whose archive URL lies outside its
            user's part (:func:`slurm_yolo.archive.index_store.refusal`).
    """

    store: Store
    index_url: str
    allowed_prefix: str | None = None

    @property
    def bucket(self) -> str:
        return split_url(self.index_url)[0]

    def key(self, rel: str) -> str:
        """Object key of ``rel`` under the index prefix."""
        return split_url(self.index_url)[1] + rel

    @classmethod
    def at(cls, store: Store, index_url: str, allowed_prefix: str | None = None) -> IndexLocation:
        """The index at ``index_url`` (given with or without its trailing ``/``)."""
        return cls(store, index_url.rstrip("/") + "/", allowed_prefix)
