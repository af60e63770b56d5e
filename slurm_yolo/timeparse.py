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


def time_minutes(value: str | int, where: str = "config") -> int:
    """Parse a Slurm time limit into whole minutes (rounded up), as sbatch reads ``--time``.

    Accepts ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS`` and an int of minutes.
    """
    bad = ConfigError(f"{where}: slurm.time={value!r} must look like 24:00:00, 2-00:00:00 or a number of minutes")
    if isinstance(value, int):
        if value <= 0:
            raise bad
        return value
    text = value.strip()
    days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
    parts = rest.split(":")
    if not days.isdigit() or not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        raise bad
    nums = [int(p) for p in parts]
    if "-" in text:  # D-HH[:MM[:SS]]
        h, m, s = (nums + [0, 0])[:3]
    else:  # MM | MM:SS | HH:MM:SS
        h, m, s = {1: (0, nums[0], 0), 2: (0, *nums), 3: tuple(nums)}[len(nums)]
    total = int(days) * 1440 + h * 60 + m + (1 if s else 0)
    if total <= 0:
        raise bad
    return total


def duration_seconds(value: str | int | float, what: str) -> float:
    """Parse ``90``, ``30s``, ``10m``, ``1.5h`` into seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION_RE.fullmatch(str(value).strip())
        if not m:
            raise ConfigError(f"{what}={value!r} must be a duration like 30s, 10m or 1h")
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]
    if seconds <= 0:
        raise ConfigError(f"{what} must be positive")
    return seconds
