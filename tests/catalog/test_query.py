"""Unit tests of the pure query layer: --where parsing, ages, sorting."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from slurm_yolo.catalog import query
from slurm_yolo.catalog.query import Condition, Query
from slurm_yolo.errors import ConfigError

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, expected", [
    ("map50_95>0.85", Condition("map50_95", ">", 0.85)),
    ("map50_95 >= 0.85", Condition("map50_95", ">=", 0.85)),
    ("hparams.lr0==0.01", Condition("hparams.lr0", "==", 0.01)),
    ("hparams.batch<=16", Condition("hparams.batch", "<=", 16.0)),
    ("project!=pcb", Condition("project", "!=", "pcb")),
    ("project=='pcb-x'", Condition("project", "==", "pcb-x")),
    ('dataset_version=="2"', Condition("dataset_version", "==", "2")),
    ("end<2026-08-01", Condition("end", "<", "2026-08-01")),
    ("map50<1e-3", Condition("map50", "<", 0.001)),
    ("project=='>x'", Condition("project", "==", ">x")),
])
def test_parse_where(text, expected):
    assert query.parse_where(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("map50_95", "FIELD OP VALUE"),
    ("map50_95>", "FIELD OP VALUE"),
    ("map50_95=0.8", "FIELD OP VALUE"),
    ("map5095>0.8", "did you mean 'map50_95'"),
    ("hparams.>1", "unknown field"),
    ("map50>nan", "NaN"),
    ("map50_95>>0.5", "starts with an operator"),
    ("map50_95<>0.5", "starts with an operator"),
    ("map50_95>=<0.5", "starts with an operator"),
])
def test_parse_where_errors_name_the_fix(text, fragment):
    with pytest.raises(ConfigError, match="--where") as e:
        query.parse_where(text)
    assert fragment in str(e.value)


def test_condition_semantics():
    line = {"map50_95": 0.9, "project": "pcb", "hparams": {"lr0": 0.01}, "end": "2026-07-01T00:00:00Z",
            "recall": None, "attempts": 2}
    assert query.parse_where("map50_95>0.85").matches(line)
    assert not query.parse_where("map50_95>0.9").matches(line)
    assert query.parse_where("hparams.lr0==0.01").matches(line)
    assert query.parse_where("attempts>=2").matches(line)
    assert query.parse_where("end<2026-08-01").matches(line)
    assert query.parse_where("project!=weld").matches(line)
    # missing / null / wrong-type values never match (SQL NULL semantics)
    assert not query.parse_where("recall<1").matches(line)
    assert not query.parse_where("recall!=1").matches(line)
    assert not query.parse_where("hparams.batch>0").matches(line)
    assert not query.parse_where("project>0").matches(line)


@pytest.mark.parametrize("text, expected", [
    ("90d", NOW - timedelta(days=90)),
    ("12h", NOW - timedelta(hours=12)),
    ("2w", NOW - timedelta(weeks=2)),
    ("1.5d", NOW - timedelta(hours=36)),
    ("2026-08-01", datetime(2026, 8, 1, tzinfo=timezone.utc)),
    ("2026-08-01T10:00:00Z", datetime(2026, 8, 1, 10, tzinfo=timezone.utc)),
])
def test_parse_since(text, expected):
    assert query.parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["90", "3 months", "yesterday", "-2d"])
def test_parse_since_errors(text):
    with pytest.raises(ConfigError, match="90d"):
        query.parse_since(text, NOW)


def test_parse_days():
    assert query.parse_days("30d", "--ia-after") == 30
    assert query.parse_days("26w", "--x") == 182
    assert query.parse_days("7", "--x") == 7
    for bad in ("0d", "12h", "x"):
        with pytest.raises(ConfigError, match="--x"):
            query.parse_days(bad, "--x")


def test_sort_none_last_both_directions_and_multiple_keys():
    lines = [{"run_id": "a", "m": 0.5, "p": "x"}, {"run_id": "b", "m": None, "p": "x"},
             {"run_id": "c", "m": 0.9, "p": "y"}, {"run_id": "d", "m": 0.5, "p": "y"}]
    ids = lambda xs: [x["run_id"] for x in xs]  # noqa: E731
    assert ids(query.sort_records(lines, ["-m"])) == ["c", "a", "d", "b"]
    assert ids(query.sort_records(lines, ["m"])) == ["a", "d", "c", "b"]
    assert ids(query.sort_records(lines, ["-m", "-run_id"])) == ["c", "d", "a", "b"]
    assert ids(query.sort_records(lines, ["p", "-m"])) == ["a", "b", "c", "d"]


def test_parse_sort_checks_fields():
    assert query.parse_sort("-map50_95,hparams.lr0") == ("-map50_95", "hparams.lr0")
    with pytest.raises(ConfigError, match="--sort"):
        query.parse_sort("-mAP")


def test_select_filters_sorts_limits():
    lines = [{"run_id": str(i), "project": "p" if i % 2 else "q", "map50_95": i / 10, "end_state": "COMPLETED",
              "submitted_at": (NOW - timedelta(days=i)).isoformat()} for i in range(10)]
    q = Query(project="p", since=NOW - timedelta(days=7, hours=12), where=(query.parse_where("map50_95>=0.3"),),
              sort=("-map50_95",), limit=2)
    assert [x["run_id"] for x in query.select(lines, q)] == ["7", "5"]
