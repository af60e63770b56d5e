"""tests/unit/ holds pure logic only, and this test keeps it so.

A test that takes a server fixture (an S3 server, a catalog or a bucket on one, a browser,
an MLflow server) belongs in the folder named for what it needs (tests/s3/, tests/catalog/,
tests/report/), where ``-m "not s3"`` and a fast unit run leave it out. Fixtures are found
statically: the ones the plugins in tests/fixtures/ define that start or use a server, and,
in each unit test file, the local fixtures that take one of those.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# The plugins whose fixtures start a server or use one (environment.py and needs.py do not).
SERVER_PLUGINS = ("servers.py", "catalog.py", "browser.py")
# Unit test files that still take a server fixture, each with the folder it is to move to.
# Remove a line once its file has moved (this test fails until then, so the list only shrinks).
AWAITING_MOVE: dict[str, str] = {}


def _functions(tree: ast.AST) -> list[ast.FunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]


def _args(fn: ast.FunctionDef) -> set[str]:
    return {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}


def _is_fixture(fn: ast.FunctionDef) -> bool:
    for d in fn.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Attribute) and target.attr == "fixture":
            return True
        if isinstance(target, ast.Name) and target.id == "fixture":
            return True
    return False


def server_fixtures() -> set[str]:
    """The fixtures of tests/fixtures/ that start or use a server."""
    names = set()
    for plugin in SERVER_PLUGINS:
        tree = ast.parse((TESTS / "fixtures" / plugin).read_text())
        names |= {fn.name for fn in _functions(tree) if _is_fixture(fn)}
    return names


def needs_a_server(source: str, servers: set[str]) -> list[str]:
    """The test functions in ``source`` that take a server fixture, directly or through the
    file's own fixtures."""
    functions = _functions(ast.parse(source))
    impure = set(servers)
    grown = True
    while grown:  # a local fixture taking one that needs a server needs it too
        grown = False
        for fn in functions:
            if _is_fixture(fn) and fn.name not in impure and _args(fn) & impure:
                impure.add(fn.name)
                grown = True
    return [fn.name for fn in functions if fn.name.startswith("test") and _args(fn) & impure]


def test_the_rule_sees_server_fixtures_directly_and_through_local_fixtures():
    servers = {"store", "bucket"}
    source = ("import pytest\n@pytest.fixture\ndef seeded(bucket):\n    pass\n"
              "@pytest.fixture(scope='module')\ndef twice(seeded):\n    pass\n"
              "def test_a(tmp_path):\n    pass\ndef test_b(twice):\n    pass\ndef test_c(store, tmp_path):\n    pass\n")
    assert needs_a_server(source, servers) == ["test_b", "test_c"]
    assert {"store", "bucket", "s3_server", "s3_endpoint", "moto_server", "cat", "browser",
            "mlflow_server"} <= server_fixtures()
    assert "weird_path" not in server_fixtures()


def test_unit_tests_take_no_server_fixture():
    servers = server_fixtures()
    found = {path.name: needs_a_server(path.read_text(), servers)
             for path in sorted((TESTS / "unit").glob("test_*.py"))}
    found = {name: tests for name, tests in found.items() if tests}
    assert set(found) - set(AWAITING_MOVE) == set(), f"move these to the folder of what they need: {found}"
    assert set(AWAITING_MOVE) - set(found) == set(), "moved (or pure now): remove them from AWAITING_MOVE"


def test_markers_come_from_the_folder_and_from_the_fixtures_taken():
    from tests.fixtures.needs import folder_of, needs

    assert needs("unit", {"tmp_path"}) == {"unit"}
    assert needs("unit", {"store", "s3_server", "tmp_path"}) == {"unit", "s3"}
    assert needs("report", {"browser", "moto_server"}) == {"browser", "s3"}
    assert needs("training", set()) == {"training"}
    assert needs(None, {"mlflow_server"}) == {"mlflow"}
    assert folder_of(TESTS / "s3" / "test_x.py") == "s3"
    assert folder_of(TESTS / "conftest.py") is None and folder_of(Path("/elsewhere/test_x.py")) is None


def test_test_files_in_folders_without_a_package_have_unique_names():
    # pytest imports a test file of a folder without __init__.py by its bare name: two such files
    # of one name make the second fail to collect ("import file mismatch") in one session.
    seen: dict[str, Path] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        if (path.parent / "__init__.py").exists():
            continue
        assert path.name not in seen, f"{path} and {seen[path.name]}: rename one"
        seen[path.name] = path
