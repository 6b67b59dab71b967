"""The project's folder: the config's default paths (conf/paths/default.yaml) are read from it, not from the current
directory, so that dip-run finds the presets' images wherever it is started.

`${dip.project:<path>}` in a config is <path> made absolute against the project's root, the folder that holds
pyproject.toml and conf/ (a checkout, installed in editable mode as `make install` does). Without one (the package
installed from a wheel, so no checkout next to it) a relative path is read from the current directory, as before.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

RESOLVER = "dip.project"


def project_root() -> Path | None:
    """The checkout this package runs from (src/dip_lightning/ -> the folder with pyproject.toml and conf/)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "conf" / "train.yaml").is_file() else None


def project_path(path: str) -> str:
    """`path` as an absolute path: a relative one from the project's root (else the current directory)."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_absolute():
        p = (project_root() or Path.cwd()) / p
    return os.path.normpath(p)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, project_path)


register_resolvers()  # on import: dip_lightning.train imports this module before Hydra composes its config
