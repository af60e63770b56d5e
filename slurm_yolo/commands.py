"""The one place where slurm-yolo runs external commands.

Builders elsewhere return argv lists (pure, testable); parsers take the text (pure, table-
tested with captured output); this module executes: never through a shell, always with a
timeout, and failures become :class:`~slurm_yolo.errors.CommandError` naming the command.
"""

from __future__ import annotations

import subprocess
from typing import Mapping, Sequence

from slurm_yolo.errors import CommandError


def run_command(
    argv: Sequence[str],
    op: str,
    *,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    cwd: str | None = None,
) -> subprocess.CompletedProcess:
    """Run ``argv`` (no shell), capture text output, and return the completed process.

    Args:
        argv: the command and its arguments.
        op: what this is for, used in the error message (e.g. ``"submit"``).
        timeout: seconds before the command is killed and :class:`CommandError` raised.
        env: the complete environment for the child (``None``: inherit).
        check: raise :class:`CommandError` on a non-zero exit.
        cwd: working directory.
    """
    argv = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=None if env is None else dict(env),
            cwd=cwd, stdin=subprocess.DEVNULL, check=False,
        )
    except FileNotFoundError as e:
        raise CommandError(op, argv, f"{argv[0]} is not installed or not on PATH") from e
    except subprocess.TimeoutExpired as e:
        raise CommandError(op, argv, f"no answer within {timeout:g} s") from e
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise CommandError(op, argv, detail[-1] if detail else f"exit code {proc.returncode}")
    return proc
