"""Every way slurm-yolo reads a time or a duration, in one place.

- :func:`parse_time`: ISO-8601 timestamps in records and the index (``2026-11-22T12:00:00Z``);
- :func:`parse_since`: ages and dates on the command line (``--since 90d``, ``2026-08-01``);
- :func:`parse_days`: whole days for lifecycle rules (``30d``, ``26w``);
- :func:`duration_seconds`: config durations (``archive.sync_every: 10m``);
- :func:`time_minutes`: Slurm time limits (``slurm.time: 24:00:00``), as sbatch reads them.

Bad input is a :class:`~slurm_yolo.errors.ConfigError` naming the input and the expected form.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from slurm_yolo.errors import ConfigError

_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([hdw])")
_AGE_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)?")


def parse_time(text: Any) -> datetime | None:
    """An ISO-8601 timestamp or date as an aware UTC datetime; ``None`` if absent/unparsable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def parse_since(text: str, now: datetime, what: str = "--since") -> datetime:
    """``90d``, ``12h``, ``2w`` before ``now``, or an ISO date/time (``2026-08-01``) → UTC datetime."""
    m = _AGE_RE.fullmatch(text.strip())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _AGE_UNITS[m.group(2)])
    when = parse_time(text.strip())
    if when is None:
        raise ConfigError(f"{what} {text!r}: expected an age like 90d, 12h, 2w or an ISO date like 2026-08-01")
    return when


def parse_days(text: str, what: str) -> int:
    """``30d``, ``2w`` or ``30`` as a whole number of days (lifecycle rules count in days)."""
    m = re.fullmatch(r"(\d+)\s*([dw]?)", text.strip())
    if not m or int(m.group(1)) <= 0:
        raise ConfigError(f"{what} {text!r}: expected a positive number of days like 30d or 26w")
    return int(m.group(1)) * (7 if m.group(2) == "w" else 1)
