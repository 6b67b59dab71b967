"""The source stays in small modules with one job each, and packages talk through public names: a module over 400
lines, a private name (`_x`) imported from another package, or an import that docs/design.md's layering forbids,
fails here with the file and the name."""

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


# docs/design.md, "What each package may import": package -> the packages its modules never import at run time
# (an import for type hints alone, under `if TYPE_CHECKING:`, is allowed)
FORBIDDEN = {
    ("dip_lightning", "nets"): (("dip_lightning", "tasks"), ("dip_lightning", "train")),
    ("dip_lightning", "operators"): (("dip_lightning", "tasks"), ("dip_lightning", "train")),
    ("dip_lightning", "tasks"): (("dip_lightning", "sweeps"), ("hydra_plugins",)),
    ("dip_lightning", "callbacks"): (("dip_lightning", "train"),),
    ("dip_lightning", "loop"): (("hydra_plugins",),),
}


def runtime_imports(path: Path, text: str | None = None) -> list[tuple[str, ...]]:
    """The dotted modules `path` (or `text` as if it were that module) imports outside `if TYPE_CHECKING:` blocks,
    relative imports resolved."""
    found: list[tuple[str, ...]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:
                base = package_of(path)[: len(package_of(path)) - node.level + 1]
                found.append((*base, *(node.module.split(".") if node.module else ())))
            else:
                found.append(tuple(node.module.split(".")))
        elif isinstance(node, ast.Import):
            found.extend(tuple(a.name.split(".")) for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text() if text is None else text))
    return found


def test_packages_import_only_what_the_design_allows():
    found = []
    for path in modules():
        for package, forbidden in FORBIDDEN.items():
            if package_of(path)[: len(package)] != package:
                continue
            for target in runtime_imports(path):
                if any(target[: len(f)] == f for f in forbidden):
                    found.append(f"{path.relative_to(SRC)} imports {'.'.join(target)}")
    assert not found, "imports that docs/design.md's layering forbids: " + "; ".join(found)


def test_the_layering_check_sees_a_forbidden_import_and_lets_type_hints_through():
    path = SRC / "dip_lightning" / "callbacks" / "probe.py"  # a module that would sit in callbacks/
    text = "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from ..train import PreparedRun\n"
    text += "from ..train import run\n"
    assert runtime_imports(path, text) == [("typing",), ("dip_lightning", "train")]
