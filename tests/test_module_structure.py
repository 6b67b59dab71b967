"""The source stays in small modules with one job each, and packages talk through public names: a module over 400
lines, or a private name (`_x`) imported from another package, fails here with the file and the name."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "egg-info" not in p.parts)


def package_of(path: Path) -> tuple[str, ...]:
    """The package a module belongs to, as dotted parts (dip_lightning.sweeps -> ("dip_lightning", "sweeps"))."""
    return path.relative_to(SRC).parent.parts


def imported_package(path: Path, node: ast.ImportFrom) -> tuple[str, ...]:
    """The package of the module an ImportFrom names (relative imports resolved against `path`'s package)."""
    if node.level:
        base = package_of(path)[: len(package_of(path)) - node.level + 1]
        parts = (*base, *(node.module.split(".") if node.module else ()))
    else:
        parts = tuple(node.module.split("."))
    target = SRC.joinpath(*parts)
    return parts if target.is_dir() else parts[:-1]


def test_every_module_in_src_is_at_most_400_lines():
    long = {str(p.relative_to(SRC)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them along their jobs): {long}"


def test_no_private_name_is_imported_from_another_package():
    found = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
                continue
            private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if private and imported_package(path, node) != package_of(path):
                found.append(f"{path.relative_to(SRC)}: {', '.join(private)} from {'.' * node.level}{node.module}")
    assert not found, "private names imported across packages (make them public): " + "; ".join(found)


def test_the_checks_see_a_cross_package_private_import():
    # the resolution above on a module of dip_lightning.loop importing from its parent package
    path = SRC / "dip_lightning" / "loop" / "engine.py"
    (node,) = ast.parse("from ..train import _x").body
    assert imported_package(path, node) == ("dip_lightning",) != package_of(path)
    (same,) = ast.parse("from .iteration import _y").body
    assert imported_package(path, same) == package_of(path)
