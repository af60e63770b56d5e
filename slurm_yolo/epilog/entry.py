"""``entry.json``: what the spool knows about one staged attempt, as a frozen type.

Written by the archiver when it stages the attempt and by the drain after each try; read by
the drain and ``spool list``. Unknown keys are ignored and missing optional ones take their
defaults, so entries written by an older version still load (its ``attempts`` counter is
``tries`` here).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurm_yolo.record import write_json_atomic

ENTRY_JSON = "entry.json"
# Back-off between the drain's tries of a transiently failing entry: none after the epilog's
# own failed try (the next drain tries at once), then 1, 2, 4, ... minutes, at most an hour.
BACKOFF_FIRST_S, BACKOFF_MAX_S = 60.0, 3600.0


@dataclass(frozen=True)
class EntryInfo:
    """One staged attempt in the spool.

    Attributes:
        run_id, attempt, job_id, uid, user: whose run, from slurmd/slurmctld and passwd.
        dest: the archive URL (under the user's allowed prefix).
        source: the run folder on the shared filesystem (for re-copies and large files).
        created: when the archiver staged it (UTC ISO); by: who (``epilog_slurmd@n1``, ...).
        complete: the snapshot has every file; staging: written before the copy, not yet done.
        restaged, shipped_partial: the drain's re-copy of a cut-short snapshot, and when the
            partial one was shipped.
        tries, last_error, error_class, last_try: the shipping tries that failed.
        next_try_s: ``time.time()`` before which the drain does not try again (back-off).
        permanent: the last failure needs a person (credentials, a missing bucket): the drain
            stops trying until ``spool drain --all``.
    """

    run_id: str
    attempt: int
    job_id: str
    uid: int
    dest: str
    user: str | None = None
    source: str | None = None
    created: str | None = None
    by: str | None = None
    complete: bool = True
    staging: bool = False
    restaged: str | None = None
    shipped_partial: str | None = None
    tries: int = 0
    last_error: str | None = None
    error_class: str | None = None
    last_try: str | None = None
    next_try_s: float | None = None
    permanent: bool = False

    @classmethod
    def load(cls, entry: Path) -> EntryInfo:
        """Read ``entry/entry.json``.

        Raises:
            OSError: it cannot be read. ValueError: it is not a valid entry.
        """
        raw = json.loads((entry / ENTRY_JSON).read_text())
        if not isinstance(raw, dict):
            raise ValueError("entry.json is not a JSON object")
        if "tries" not in raw and isinstance(raw.get("attempts"), int):
            raw["tries"] = raw["attempts"]
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            info = cls(**{k: v for k, v in raw.items() if k in names})
        except TypeError as e:
            raise ValueError(f"entry.json lacks a field: {e}") from e
        if not isinstance(info.uid, int) or not isinstance(info.attempt, int) or not isinstance(info.dest, str):
            raise ValueError("entry.json: uid and attempt must be integers, dest a string")
        return info

    def save(self, entry: Path) -> None:
        """Write ``entry/entry.json`` atomically (root-only)."""
        write_json_atomic(entry / ENTRY_JSON, dataclasses.asdict(self), mode=0o600)

    def replace(self, **changes: Any) -> EntryInfo:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def after_failure(self, detail: str, error_class: str | None, transient: bool, now: str,
                      clock: float | None = None) -> EntryInfo:
        """The entry after a failed try: counted, and backed off (transient) or stopped (permanent)."""
        clock = time.time() if clock is None else clock
        tries = self.tries + 1
        wait = 0.0 if tries <= 1 else min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (tries - 2))
        return self.replace(tries=tries, last_error=detail, error_class=error_class, last_try=now,
                            next_try_s=clock + wait if transient else None, permanent=not transient)

    def due(self, clock: float | None = None, *, everything: bool = False) -> bool:
        """Whether the drain should try it now (``everything``: whatever its last failure)."""
        if everything:
            return True
        if self.permanent:
            return False
        return self.next_try_s is None or (time.time() if clock is None else clock) >= self.next_try_s
