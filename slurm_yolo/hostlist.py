"""Slurm hostlists (``n[1-3,7],gpu-a[01-02]``): expand them, or take the first host.

A neutral module so that the job (rendezvous host of a multi-node run) and the epilog can
both read ``SLURM_JOB_NODELIST`` without importing each other. Pure: no ``scontrol show
hostnames`` (a subprocess per task start, and not on PATH in an epilog).
"""

from __future__ import annotations

import re
from itertools import islice
from typing import Iterator

from slurm_yolo.errors import SlurmYoloError

_RANGE_RE = re.compile(r"(\d+)(?:-(\d+))?")
# A nodelist names the job's nodes; anything this long is not one we should expand blindly.
MAX_HOSTS = 65536


def iter_hosts(hostlist: str) -> Iterator[str]:
    """Yield the host names of a Slurm hostlist, in Slurm's order, lazily.

    Commas inside brackets separate ranges, outside they separate hosts; a host may have
    several bracket groups (``r[1-2]n[01-02]`` is ``r1n01 r1n02 r2n01 r2n02``); zero padding
    of a range's start is kept, as Slurm does.

    Raises:
        SlurmYoloError: unbalanced brackets, an empty or reversed range, a non-numeric range.
    """
    for group in _split_top(hostlist):
        yield from _expand_group(group, hostlist)


def expand_hostlist(hostlist: str) -> list[str]:
    """All host names of a hostlist (at most :data:`MAX_HOSTS`); see :func:`iter_hosts`."""
    hosts = list(islice(iter_hosts(hostlist), MAX_HOSTS + 1))
    if len(hosts) > MAX_HOSTS:
        raise SlurmYoloError(f"hostlist {hostlist[:80]!r} names more than {MAX_HOSTS} hosts")
    return hosts


def first_host(hostlist: str) -> str:
    """The first host of a hostlist (``n[3-5],m1`` → ``n3``), without expanding the rest.

    Raises:
        SlurmYoloError: the hostlist is empty or malformed.
    """
    for host in iter_hosts(hostlist):
        return host
    raise SlurmYoloError(f"hostlist {hostlist!r} is empty; expected e.g. SLURM_JOB_NODELIST=n[1-2]")


def _split_top(hostlist: str) -> list[str]:
    groups, depth, start = [], 0, 0
    for i, c in enumerate(hostlist):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == "," and depth == 0:
            groups.append(hostlist[start:i])
            start = i + 1
        if depth not in (0, 1):
            raise SlurmYoloError(f"hostlist {hostlist[:80]!r} has unbalanced brackets")
    if depth:
        raise SlurmYoloError(f"hostlist {hostlist[:80]!r} has unbalanced brackets")
    groups.append(hostlist[start:])
    return [g.strip() for g in groups if g.strip()]


def _expand_group(group: str, whole: str) -> Iterator[str]:
    head, bracket, rest = group.partition("[")
    if not bracket:
        yield group
        return
    body, _, tail = rest.partition("]")
    for value in _ranges(body, whole):
        for suffix in _expand_group(tail, whole) if tail else [""]:
            yield head + value + suffix


def _ranges(body: str, whole: str) -> Iterator[str]:
    for part in body.split(","):
        m = _RANGE_RE.fullmatch(part.strip())
        if not m:
            raise SlurmYoloError(f"hostlist {whole[:80]!r}: range {part!r} is not N or N-M")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise SlurmYoloError(f"hostlist {whole[:80]!r}: range {part!r} goes backwards")
        for n in range(int(lo), int(hi) + 1):
            yield str(n).zfill(len(lo))
