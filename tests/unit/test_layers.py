"""The folders tell the architecture, and this test keeps it true.

Layers, top to bottom:

- the CLI and the Python API (``slurm_yolo/cli.py``, ``slurm_yolo/__init__.py``), which join
  the rooms below (the launcher with the job it submits, the catalog with the launcher for
  ``reproduce``);
- ``report``, the display layer (portal, MLflow bridge), on top of the read side;
- the rooms ``launcher``, ``job``, ``epilog``, ``catalog``;
- ``archive``, the write side (store, s5cmd, layout, the index writer);
- the core modules at the top level of the package (site config, output, records, names,
  states, time parsing, the command runner, errors, ...).

A module may import its own room and the layers below it, never a sibling room or a layer
above: what several rooms share lives lower down. Every ``import`` statement counts,
function-level ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "slurm_yolo"
ROOMS = ("launcher", "job", "epilog", "catalog")
CLI = {"slurm_yolo", "slurm_yolo.cli", "slurm_yolo.__main__"}


def layer(module: str) -> tuple[int, str]:
    """(rank, room): 4 the CLI, 3 report, 2 a room, 1 archive, 0 core."""
    if module in CLI:
        return 4, "cli"
    parts = module.split(".")
    if parts[1] == "report":
        return 3, "report"
    if parts[1] in ROOMS and (len(parts) > 2 or (PACKAGE / parts[1]).is_dir()):
        return 2, parts[1]
    if parts[1] == "archive":
        return 1, "archive"
    return 0, "core"


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every project module ``path`` imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("slurm_yolo.")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slurm_yolo"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.append((node.lineno, sub if is_module(sub) else node.module))
    return found


def project_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def allowed(importer: str, imported: str) -> bool:
    (rank_a, room_a), (rank_b, room_b) = layer(importer), layer(imported)
    return rank_a == 4 or rank_b < rank_a or (rank_b == rank_a and room_b == room_a)


@pytest.mark.parametrize("module", project_modules())
def test_imports_only_its_own_room_and_lower_layers(module):
    path = ROOT.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    bad = [f"line {line}: {name} ({layer(name)[1]})" for line, name in imported_modules(path)
           if not allowed(module, name)]
    assert not bad, f"{module} ({layer(module)[1]}) imports across or up: {bad}"


def test_the_rule_catches_a_sibling_import():
    assert not allowed("slurm_yolo.catalog.index", "slurm_yolo.epilog.spool")
    assert not allowed("slurm_yolo.epilog.spool", "slurm_yolo.catalog.index")
    assert not allowed("slurm_yolo.launcher.submit", "slurm_yolo.job.train")
    assert not allowed("slurm_yolo.archive.s5cmd", "slurm_yolo.catalog.query")
    assert not allowed("slurm_yolo.record", "slurm_yolo.archive.s5cmd")
    assert not allowed("slurm_yolo.catalog.cli", "slurm_yolo.cli")
    assert allowed("slurm_yolo.epilog.spool", "slurm_yolo.archive.index_store")
    assert allowed("slurm_yolo.report.build", "slurm_yolo.catalog.index")
    assert allowed("slurm_yolo.cli", "slurm_yolo.report.pages")


def test_function_level_imports_of_the_project_say_why():
    """Function-level imports of the project are kept for one rule only: the epilog's no-op path
    (``slurm_yolo/__init__.py`` and ``epilog/main.py``, which every job on the cluster starts,
    import nothing they do not need). torch and ultralytics, never imported on the login
    node, are third-party and imported inside the job's functions. Everything else imports at
    the top of its module."""
    allowed_files = {"slurm_yolo/__init__.py", "slurm_yolo/epilog/main.py"}
    late = []
    for module in project_modules():
        path = ROOT.joinpath(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("slurm_yolo") \
                            and rel not in allowed_files:
                        late.append(f"{rel}:{inner.lineno} {inner.module}")
    assert not late, "function-level project imports outside the entry points: " + ", ".join(late)
