"""The one place where slurm-yolo runs external commands.

Builders elsewhere return argv lists (pure, testable); parsers take the text (pure, table-
tested with captured output); this module executes: never through a shell, always with a
timeout (for training, :func:`run_foreground`: Slurm's time limit), and failures become
:class:`~slurm_yolo.errors.CommandError` naming the command.
"""

from __future__ import annotations

import errno
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable, Mapping, Sequence

from slurm_yolo.errors import CommandError


def run_command(
    argv: Sequence[str],
    op: str,
    *,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    cwd: str | None = None,
    input_text: str | None = None,
    as_user: tuple[int, int] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``argv`` (no shell), capture text output, and return the completed process.

    Args:
        argv: the command and its arguments.
        op: what this is for, used in the error message (e.g. ``"submit"``).
        timeout: seconds before the command is killed and :class:`CommandError` raised.
        env: the complete environment for the child (``None``: inherit).
        check: raise :class:`CommandError` on a non-zero exit.
        cwd: working directory.
        input_text: fed to the child's stdin (else stdin is ``/dev/null``).
        as_user: ``(uid, gid)``: the child runs as that user, with no supplementary groups
            (root only). The switch happens in the new process before it executes anything,
            so a threaded parent (the epilog's watchdog) never forks a Python copy of itself.
    """
    argv = [str(a) for a in argv]
    who = {"user": as_user[0], "group": as_user[1], "extra_groups": []} if as_user else {}
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=None if env is None else dict(env),
            cwd=cwd, input=input_text, stdin=None if input_text is not None else subprocess.DEVNULL, check=False,
            **who,
        )
    except FileNotFoundError as e:
        raise CommandError(op, argv, f"{argv[0]} is not installed or not on PATH") from e
    except subprocess.TimeoutExpired as e:
        raise CommandError(op, argv, f"no answer within {timeout:g} s") from e
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise CommandError(op, argv, detail[-1] if detail else f"exit code {proc.returncode}")
    return proc


@dataclass(frozen=True)
class Finished:
    """How a command run by :func:`run_until` ended (it never raises for the command's own failure)."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False
    missing: bool = False  # the executable does not exist or cannot be executed


def _start(argv: Sequence[str], env: Mapping[str, str], stdin: bool,
           pass_fds: Sequence[int]) -> subprocess.Popen[str] | Finished:
    """Start ``argv`` with piped output (and stdin, else ``/dev/null``); a command that cannot
    be started is a :class:`Finished` with ``missing`` set, not an exception."""
    try:
        return subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(env), close_fds=True,
            pass_fds=tuple(pass_fds),
        )
    except (FileNotFoundError, PermissionError) as e:  # missing, or not executable (EACCES)
        return Finished(127, "", f"{argv[0]}: {e.strerror}", missing=True)
    except OSError as e:
        if e.errno != errno.ENOEXEC:  # a file that is no program (no #! line, another arch)
            raise
        return Finished(127, "", f"{argv[0]}: {e.strerror}", missing=True)


def run_until(argv: Sequence[str], *, limit_s: float, env: Mapping[str, str], stdin_text: str | None = None,
              pass_fds: Sequence[int] = ()) -> Finished:
    """Run ``argv`` for at most ``limit_s`` seconds, then kill it; report whatever it printed.

    For commands whose output is parsed line by line even when they fail (s5cmd ``--json``):
    no exception for a non-zero exit or a time-out, only :class:`Finished` saying so. The child
    stays in our process group: if Slurm kills the epilog's group, it goes too.

    Args:
        argv: the command (no shell).
        limit_s: seconds before it is killed.
        env: its complete environment.
        stdin_text: fed to its stdin (else ``/dev/null``).
        pass_fds: descriptors it inherits under the same numbers (``/proc/self/fd/N``).
    """
    if limit_s <= 0:
        return Finished(-1, "", "", timed_out=True)
    proc = _start(argv, env, stdin_text is not None, pass_fds)
    if isinstance(proc, Finished):
        return proc
    try:
        stdout, stderr = proc.communicate(stdin_text, timeout=limit_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        timed_out = True
    return Finished(proc.returncode, stdout or "", stderr or "", timed_out)


def run_fed(argv: Sequence[str], *, limit_s: float, env: Mapping[str, str], first: str, then: str,
            ready: Callable[[str], bool | None], pass_fds: Sequence[int] = ()) -> tuple[Finished, bool]:
    """:func:`run_until` for a command that reads its work from stdin as it comes (s5cmd
    ``run``): ``first`` is written, stdin stays open, and each line the command prints
    (stdout or stderr) goes to ``ready`` as it arrives. When ``ready`` says ``True``, ``then``
    is written and stdin closed; ``False`` closes it without; ``None`` waits for more. So a
    second batch of work starts only after the command reported the first done, in the same
    process (no second start, no second connection). Killed at ``limit_s`` like run_until.

    Returns:
        How it ended, and whether ``then`` was written.
    """
    if limit_s <= 0:
        return Finished(-1, "", "", timed_out=True), False
    end = time.monotonic() + limit_s
    proc = _start(argv, env, True, pass_fds)
    if isinstance(proc, Finished):
        return proc, False
    lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
    readers = [threading.Thread(target=_lines_to, args=(stream, n, lines), daemon=True)
               for n, stream in enumerate((proc.stdout, proc.stderr))]
    for reader in readers:
        reader.start()
    out: tuple[list[str], list[str]] = ([], [])
    stdin = proc.stdin
    assert stdin is not None
    decided, sent, open_streams, timed_out = False, False, 2, False

    def write(text: str) -> None:
        try:
            stdin.write(text)
            stdin.flush()
        except (BrokenPipeError, OSError, ValueError):  # it died (or stdin is closed): its output tells
            pass

    # From a thread: a command that stops reading cannot hold this one past its deadline.
    writer = threading.Thread(target=write, args=(first,), daemon=True)
    writer.start()

    def finish_input(text: str) -> None:
        writer.join(max(0.0, end - time.monotonic()))
        if text and not writer.is_alive():
            write(text)
        try:
            stdin.close()
        except (BrokenPipeError, OSError):
            pass

    try:
        while open_streams:
            left = end - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            try:
                n, line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
                if open_streams == 1 and not decided:  # it closed its output: nothing more will come
                    decided = True
                    finish_input("")
                continue
            out[n].append(line)
            if not decided:
                verdict = ready(line)
                if verdict is not None:
                    decided, sent = True, verdict
                    finish_input(then if verdict else "")
    finally:
        if timed_out:
            proc.kill()
        if not decided or timed_out:
            finish_input("")
        proc.wait()
        for reader in readers:
            reader.join(5)
    return Finished(proc.returncode, "".join(out[0]), "".join(out[1]), timed_out), sent


def _lines_to(stream: IO[str] | None, n: int, lines: queue.Queue[tuple[int, str | None]]) -> None:
    """Each line of ``stream`` onto ``lines`` as ``(n, line)``, then ``(n, None)`` at its end."""
    try:
        if stream is not None:
            for line in stream:
                lines.put((n, line))
    finally:
        lines.put((n, None))


def run_foreground(
    argv: Sequence[str],
    op: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    block_signals: Sequence[int] = (),
    grace_s: float = 30.0,
) -> int:
    """Run a long command (e.g. training) in the foreground and return its exit code.

    Unlike :func:`run_command` nothing is captured (the child writes straight to this
    process's stdout/stderr, i.e. the Slurm log) and there is no timeout: Slurm's time limit
    is the bound. If this process is interrupted while waiting (a signal handler raising
    ``SystemExit``, e.g. submitit's requeue), the child gets SIGTERM, then SIGKILL after
    ``grace_s``, so no training process outlives the task that started it.

    Args:
        argv: the command and its arguments (no shell).
        op: what this is for, used in the error message (e.g. ``"train"``).
        env: the complete environment for the child (``None``: inherit).
        cwd: working directory.
        block_signals: signals the child (and its children) start with blocked: the mask is
            inherited across fork and exec. Blocked, not ignored, in this process while
            forking, so one arriving meanwhile is delivered here afterwards, not lost.
        grace_s: seconds between SIGTERM and SIGKILL when interrupted.

    Raises:
        CommandError: the command is not installed.
    """
    argv = [str(a) for a in argv]
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, block_signals) if block_signals else None
    try:
        proc = subprocess.Popen(argv, env=None if env is None else dict(env), cwd=cwd, stdin=subprocess.DEVNULL)
    except FileNotFoundError as e:
        raise CommandError(op, argv, f"{argv[0]} is not installed or not on PATH") from e
    finally:
        if old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    try:
        return proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
