"""What import-linter (the layers, pyproject.toml) cannot say: packages talk through public names (a private name,
`_x`, imported from another package fails here with the file and the name), and every module is in a layer."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


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
    (node,) = ast.parse("from ..errors import _x").body
    assert imported_package(path, node) == ("dip_lightning",) != package_of(path)
    (same,) = ast.parse("from .iteration import _y").body
    assert imported_package(path, same) == package_of(path)


def test_every_module_of_the_package_is_in_a_layer():
    """import-linter checks the layers (pyproject.toml, make test); a module left out of them would be checked by
    nothing."""
    import tomllib

    config = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    layered = {m.strip() for layer in contract["layers"] for m in layer.split("|")}
    package = SRC / "dip_lightning"
    tops = {f"dip_lightning.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    tops |= {f"dip_lightning.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert tops - layered == set(), f"modules in no layer of pyproject.toml's import-linter contract: {tops - layered}"
