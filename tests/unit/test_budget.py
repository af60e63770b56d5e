"""The epilog's time budget, decided once (slurm_yolo/budget.py): the stale window every waiter
uses and the clamps of the small steps inside one archiver."""

from __future__ import annotations

from slurm_yolo import budget


def test_the_stale_window_is_the_budget_and_its_margin():
    assert budget.stale_after_s(120) == 180.0
    assert budget.stale_after_s(5.0) == 5.0 + budget.MARGIN_S


def test_the_epilog_stops_before_its_watchdog():
    assert budget.epilog_deadline(1000.0, 120) == 1000.0 + 120 - budget.WATCHDOG_SLACK_S


def test_a_small_command_gets_its_share_never_less_than_it_needs_to_answer():
    assert budget.command_timeout(100.0, now=0.0) == budget.COMMAND_MAX_S  # plenty left: capped
    assert budget.command_timeout(102.0, now=100.0) == 2.0
    assert budget.command_timeout(100.0, now=100.0) == budget.COMMAND_MIN_S  # past it: still a chance to answer
    assert budget.command_timeout(50.0, now=100.0) == budget.COMMAND_MIN_S


def test_the_lock_wait_never_goes_negative():
    assert budget.lock_wait(100.0, now=0.0) == budget.LOCK_MAX_S
    assert budget.lock_wait(103.0, now=100.0) == 3.0
    assert budget.lock_wait(90.0, now=100.0) == 0.0


def test_the_copy_leaves_the_rest_of_the_budget_to_the_upload():
    assert budget.stage_deadline(100.0, now=0.0) == 100.0 * budget.STAGE_SHARE
    assert budget.stage_deadline(100.0, now=99.9) == 99.9 + budget.STAGE_MIN_S  # at least a second to copy
    assert budget.left_s(100.0, now=40.0) == 60.0
