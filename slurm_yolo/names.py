"""Run IDs and the names that become parts of store paths.

Every name that ends up in a path (task, project, model name, run ID, sweep ID) is
validated here, once, for everyone: the launcher, the job and the root-run epilog. The
epilog treats these values as hostile input, so the rules are strict and positive
(an allow-list of characters), not a deny-list.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone

from slurm_yolo.errors import ConfigError

# Letters, digits, '.', '_' and '-'; must start with a letter or digit (so never '.' or '..'),
# at most 64 characters. Nothing here can be a path separator, a control character or a
# shell metacharacter.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
GENERATED_RUN_ID_RE = re.compile(r"\d{8}_\d{6}_[0-9a-z]{8}")
SUFFIX_LEN = 8

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
# The job marker the epilog looks for in SLURM_JOB_COMMENT (``--comment``), followed by the
# run or sweep folder. Versioned so a future format can coexist with epilogs already on nodes.
# scripts/slurm-yolo-epilog.sh tests the same prefix in /bin/sh.
MARKER_PREFIX = "slurm-yolo:v1:"


def validate_name(value: object, what: str) -> str:
    """Return ``value`` if it is a safe path component, else raise :class:`ConfigError`.

    Args:
        value: the candidate name.
        what: what the name is, for the message (e.g. ``"run.project"``).
    """
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        shown = repr(value)[:80]
        raise ConfigError(
            f"{what}={shown} is not a valid name: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', '..', spaces or control characters)"
        )
    return value


def new_run_id(now: datetime | None = None) -> str:
    """Make a run ID ``YYYYMMDD_HHMMSS_<8 random base-36 chars>`` in UTC.

    IDs sort by submission time. The suffix has 36**8 ≈ 2.8e12 values drawn from the OS
    CSPRNG (fork-safe: a forked submitter never repeats its parent's draws), so even 1,000
    submits in the same second collide with probability ≈ 2e-7. That is good enough for the
    store, where runs of different users meet; on the shared filesystem uniqueness is not
    left to chance at all: :func:`slurm_yolo.launcher.submit.prepare_run` creates the folder
    with an exclusive ``mkdir`` and draws again if it already exists.
    """
    now = now or datetime.now(timezone.utc)
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(SUFFIX_LEN))
    return f"{now.astimezone(timezone.utc):%Y%m%d_%H%M%S}_{suffix}"


def new_sweep_id(now: datetime | None = None) -> str:
    """Make a sweep ID: a run ID with an ``sw_`` prefix so the two are never confused."""
    return "sw_" + new_run_id(now)
