"""Whether a config's `_target_` names a stopping rule, read from this package's source without importing it.

Resolving a config (`dip-run --cfg job --resolve`, the GT-free rule's read-out) must not import the callback
modules: they import torch and Lightning, seconds at start-up. A class of this package is read from its class
statement, its bases followed through the imports of each module to StoppingRule or to a library's class; what
the source does not tell is left to an import (run/gt_free.is_stopping_rule). tests/test_cli.py checks the answer
against the imported classes for every callback of the package.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # src/dip_lightning
STOPPING_RULE = "dip_lightning.callbacks.roles.StoppingRule"


def _module_file(module: str) -> Path | None:
    """The source file of a module of this package, found without importing it or its packages."""
    parts = module.split(".")
    if parts[0] != "dip_lightning":
        return None
    path = PACKAGE.joinpath(*parts[1:])
    for file in (path / "__init__.py", path.parent / f"{path.name}.py"):
        if file.is_file():
            return file
    return None


def _bound(tree: ast.Module, module: str, package: str, name: str) -> str | None:
    """The dotted name of what `name` is bound to at the top level of a module (`tree`), by its last binding there: a
    class defined there or a name imported into it (`from .roles import StoppingRule`, `import pytorch_lightning as
    pl`); None where anything else binds it last, or nothing does."""
    bound = None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            bound = f"{module}.{name}"
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                parts = package.split(".")
                source = ".".join([*parts[: len(parts) - node.level + 1], *([source] if source else [])])
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    bound = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if (alias.asname or alias.name.split(".")[0]) == name:
                    bound = alias.name if alias.asname else name
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.FunctionDef, ast.AsyncFunctionDef)):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if getattr(node, "name", None) == name or any(isinstance(t, ast.Name) and t.id == name for t in targets):
                bound = None
    return bound


def _dotted(expr: ast.expr, tree: ast.Module, module: str, package: str) -> str | None:
    """A base class expression (`IterationHook`, `pl.Callback`) as a dotted name; None for anything else."""
    if isinstance(expr, ast.Name):
        return _bound(tree, module, package, expr.id)
    if isinstance(expr, ast.Attribute):
        owner = _dotted(expr.value, tree, module, package)
        return f"{owner}.{expr.attr}" if owner else None
    return None


def rule_in_source(target: str) -> bool | None:
    """Whether `target`, a class of this package, is a StoppingRule, read from the package's source without importing
    it: its class statement's bases, followed through the imports of each module to StoppingRule (True) or to classes
    of other packages (torch, Lightning: none of them derives from this package's classes). None where the source
    does not tell (not a class statement of this package, a base that is no plain name) or `target` is not of this
    package: the class is then imported."""
    if not target.startswith("dip_lightning."):
        return None
    try:
        return _derives(target)
    except RecursionError:  # modules that import a name from each other in a circle
        return None


@functools.lru_cache(maxsize=None)
def _derives(target: str) -> bool | None:
    if target == STOPPING_RULE:
        return True
    if not target.startswith("dip_lightning."):
        return False  # a base of one of the package's classes from a library (torch, Lightning)
    module, _, name = target.rpartition(".")
    file = _module_file(module)
    if file is None:
        return None
    try:
        tree = ast.parse(file.read_text())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    bound = _bound(tree, module, package, name)
    if bound is None:
        return None
    if bound != target:  # imported into the module (dip_lightning.callbacks.BestIterate): where it is defined
        return _derives(bound)
    statement = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name][-1]
    verdicts = [_derives(b) if b else None for b in (_dotted(e, tree, module, package) for e in statement.bases)]
    if True in verdicts:
        return True
    return None if None in verdicts else False
