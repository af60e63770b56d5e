"""One small error hierarchy for slurm-yolo.

Every error a user can cause or fix carries a one-line message that names the input,
the operation, and the next step. Entry points catch :class:`SlurmYoloError`, print its
message and exit with :attr:`SlurmYoloError.exit_code`; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class SlurmYoloError(Exception):
    """Base class: a problem the user (or admin) can fix. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(SlurmYoloError):
    """A config, override, name or run ID is invalid. Nothing was submitted."""

    exit_code = 2


class SiteConfigError(SlurmYoloError):
    """The admin's site config (``/etc/slurm-yolo/site.yaml``) is missing, unsafe or invalid."""

    exit_code = 2


class CommandError(SlurmYoloError):
    """An external command (sbatch, scontrol, s5cmd, git) failed or timed out.

    Args:
        op: what we were doing, e.g. ``"submit"``.
        argv: the command line that ran.
        detail: stderr or the reason, already shortened to one line.
    """

    def __init__(self, op: str, argv: list[str], detail: str):
        self.op, self.argv, self.detail = op, list(argv), detail
        super().__init__(f"{op}: `{' '.join(argv[:3])}{' …' if len(argv) > 3 else ''}` failed: {detail}")


class SubmitError(SlurmYoloError):
    """Slurm refused the job (or could not be reached). Nothing was left half-submitted."""


class SubmitRefused(SubmitError):
    """sbatch refused the job as asked (partition, account, resources, an option): the fix is
    in the config, like a :class:`ConfigError`. Nothing was left half-submitted."""

    exit_code = 2


class StoreError(SlurmYoloError):
    """The object store is unreachable, refused the credentials, or an object is missing."""


class IntegrityError(SlurmYoloError):
    """A file read back from the store does not match its manifest."""


class RunNotFound(SlurmYoloError):
    """No run with that ID or folder exists (locally or in the index)."""


class Refused(SlurmYoloError):
    """The epilog cannot trust a job's marker or run folder (symlink, wrong owner, unsafe
    names); it copies nothing from it."""


class RunFailed(SlurmYoloError):
    """A waited-for run ended in a state other than COMPLETED."""

    exit_code = 3
