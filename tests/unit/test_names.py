"""Run IDs: format, time order, uniqueness under concurrent generation; name validation."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from slurm_yolo.errors import ConfigError
from slurm_yolo.names import GENERATED_RUN_ID_RE, new_run_id, new_sweep_id, validate_name


def test_format_is_utc_timestamp_and_suffix():
    rid = new_run_id(datetime(2026, 8, 1, 23, 59, 58, tzinfo=timezone.utc))
    assert GENERATED_RUN_ID_RE.fullmatch(rid)
    assert rid.startswith("20260801_235958_")


def test_ids_sort_by_time():
    early = new_run_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    late = new_run_id(datetime(2026, 1, 2, 3, 4, 6, tzinfo=timezone.utc))
    assert sorted([late, early]) == [early, late]


def _many(n: int) -> list[str]:
    return [new_run_id() for _ in range(n)]


def test_forked_and_threaded_generators_do_not_repeat_each_other():
    # The failure this guards against is a random state shared across fork() (every child
    # would print the same suffixes). 800 IDs in one second collide by chance with
    # probability ~1e-7; a shared state makes them collide every time.
    with multiprocessing.get_context("fork").Pool(4) as pool:
        batches = pool.map(_many, [100] * 4)
    with ThreadPoolExecutor(4) as ex:
        batches += list(ex.map(_many, [100] * 4))
    ids = [i for b in batches for i in b]
    assert len(ids) == 800 and all(GENERATED_RUN_ID_RE.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_sweep_ids_are_distinguishable():
    assert new_sweep_id().startswith("sw_")
    validate_name(new_sweep_id(), "sweep")


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".hidden", "a b", "x\x00", "x\n", "-flag", "é", "a" * 65, None, 3])
def test_bad_names(bad):
    with pytest.raises(ConfigError):
        validate_name(bad, "run ID")


@pytest.mark.parametrize("good", ["ci-1234", "20261122_120000_ab12cd", "yolov8s", "pcb.v2"])
def test_good_names(good):
    assert validate_name(good, "x") == good
