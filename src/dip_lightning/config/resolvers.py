"""The project's folder: the config's default paths (conf/paths/default.yaml) are read from it, not from the current
directory, so that dip-run finds the presets' images wherever it is started.

`${dip.project:<path>}` in a config is <path> made absolute against the project's root, the folder that holds
pyproject.toml and conf/ (a checkout, installed in editable mode as `make install` does). Without one (the package
installed from a wheel, so no checkout next to it) a relative path is read from the current directory, as before.
`${dip.config_groups:}` is dip-run --help's list of config groups (conf/train.yaml, hydra.help.template).
Registered when dip_lightning.config is imported; the layers above register theirs the same way: `${dip.gt_free_rule:}`,
the stopping rule a run without ground truth gets (run/gt_free.py), and `${dip.slurm_gpus:<accelerator>}` /
`${dip.slurm_mem_gb:<accelerator>}`, what launcher=submitit_slurm asks SLURM for (sweeps/slurm.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from .compose import CONF

RESOLVER = "dip.project"
GROUPS_RESOLVER = "dip.config_groups"
# Config groups that are building blocks of other configs, not choices on the command line: dip-run --help leaves
# them out of its list (conf/task_defaults: the keys every conf/task file starts from).
INTERNAL_GROUPS = ("task_defaults",)


def project_root() -> Path | None:
    """The checkout this package runs from (src/dip_lightning/ -> the folder with pyproject.toml and conf/)."""
    root = CONF.parent
    return root if (root / "pyproject.toml").is_file() and (root / "conf" / "train.yaml").is_file() else None


def project_path(path: str) -> str:
    """`path` as an absolute path: a relative one from the project's root (else the current directory)."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_absolute():
        p = (project_root() or Path.cwd()) / p
    return os.path.normpath(p)


def config_groups() -> str:
    """dip-run --help's list of config groups (hydra.help.template in conf/train.yaml): Hydra's $APP_CONFIG_GROUPS,
    in its format, without INTERNAL_GROUPS. Read from conf/, the app's one config search path: Hydra's own listing
    copies the whole config repository for every group (0.4 s here, and --help already pays it twice)."""
    conf = CONF
    folders = sorted(p for p in conf.iterdir() if p.is_dir()) if conf.is_dir() else []
    options = {p.name: sorted(f.stem for f in p.glob("*.yaml")) for p in folders}
    return "".join(
        f"{group}: {', '.join(opts)}\n"
        for group, opts in options.items()
        if opts and group != "hydra" and group not in INTERNAL_GROUPS
    )


def register_resolvers(more: dict | None = None) -> None:
    """Register this module's resolvers and `more` (name -> function: a layer above registers its own so)."""
    for name, resolver in {RESOLVER: project_path, GROUPS_RESOLVER: config_groups, **(more or {})}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
