"""commands.run_fed: the second batch of input goes only after the command answered the first."""

from __future__ import annotations

import time

from slurm_yolo.commands import run_fed

# Echoes each line it reads, as it reads it (like s5cmd run printing each command's outcome).
ECHO = ["/bin/sh", "-c", 'while read -r line; do echo "got $line"; done']
ENV = {"PATH": "/usr/bin:/bin"}


def test_then_is_written_once_ready_says_so():
    seen: list[str] = []

    def ready(line: str) -> bool | None:
        seen.append(line)
        return True if line == "got a2\n" else None

    done, sent = run_fed(ECHO, limit_s=10, env=ENV, first="a1\na2\n", then="b\n", ready=ready)
    assert sent and not done.timed_out and done.returncode == 0
    assert done.stdout == "got a1\ngot a2\ngot b\n"
    assert seen == ["got a1\n", "got a2\n"]  # asked until it decided, not after


def test_then_is_not_written_when_ready_says_no():
    done, sent = run_fed(ECHO, limit_s=10, env=ENV, first="a1\n", then="b\n", ready=lambda line: False)
    assert not sent and done.stdout == "got a1\n"


def test_a_command_that_never_answers_is_killed_at_the_limit():
    t = time.monotonic()
    done, sent = run_fed(["/bin/sleep", "30"], limit_s=0.5, env=ENV, first="x\n", then="y\n", ready=lambda line: True)
    assert done.timed_out and not sent and time.monotonic() - t < 5


def test_a_command_that_ends_early_gets_no_then():
    done, sent = run_fed(["/bin/sh", "-c", "read -r line; echo bye"], limit_s=10, env=ENV, first="a\n", then="b\n",
                         ready=lambda line: None)
    assert not sent and done.stdout == "bye\n" and not done.timed_out


def test_a_missing_program_is_reported_not_raised():
    done, sent = run_fed(["/nonexistent/s5cmd"], limit_s=5, env=ENV, first="", then="", ready=lambda line: True)
    assert done.missing and not sent
