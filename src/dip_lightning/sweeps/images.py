"""data.image=<folder or glob> in a multirun: the list of image files, one job each.

Hydra's own glob() only filters config-group options; a folder of photos is not a config group. The `dip` sweeper
(src/hydra_plugins/dip_sweepers) rewrites the override into an explicit choice list before Hydra parses it:
    data.image=photos/            -> every image file in photos/ (sorted, not recursive)
    data.image='photos/*_GT.png'  -> the files the pattern matches (quote it so the shell does not expand it)
    data.image='glob(photos/*.png)'  the same, in Hydra's spelling
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from ..errors import DIPError

KEYS = ("data.image", "data.observed")
_GLOB_CHARS = re.compile(r"[*?\[]")


def expand_images(value: str) -> list[str] | None:
    """The image files a folder or glob pattern names; None when `value` is neither (a file, a built-in name...)."""
    # imported here, not at the top: the dip sweeper imports this module whenever Hydra composes a config (dip-run
    # --help, --cfg, tab completion), and dip_lightning.data imports torch and Lightning
    from ..data.io import IMAGE_SUFFIXES

    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    wrapped = re.fullmatch(r"glob\((.*)\)", text)
    if wrapped:
        text = wrapped.group(1).strip().strip("'\"")
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        where = f"the folder {text!r}"
    elif wrapped or (_GLOB_CHARS.search(text) and "," not in text):
        files = sorted(p for p in glob.glob(os.path.expanduser(text)) if Path(p).is_file())
        where = f"the pattern {text!r}"
    else:
        return None
    if not files:
        raise DIPError(
            f"data.image: {where} matches no image file; expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))}."
        )
    return files


def quote_path(path: str) -> str:
    if "'" in path:
        raise DIPError(
            f"data.image: {path!r} has a single quote in its name, which a Hydra override cannot hold; rename the file."
        )
    # In a quoted override Hydra keeps backslashes as they are, except a run of them before `${` or the closing
    # quote, which it halves; `\${` is a literal `${` (else an OmegaConf interpolation: another file, or $HOME)
    escaped = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", path)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return "'" + escaped + "'"


def expand_arguments(arguments: list[str]) -> list[str]:
    """Command-line overrides with data.image / data.observed folders and globs replaced by choice lists."""
    out, expanded = [], []
    for arg in arguments:
        key, sep, value = arg.partition("=")
        files = expand_images(value) if sep and key.lstrip("+~") in KEYS else None
        if files is not None:
            expanded.append(key.lstrip("+~"))
        out.append(arg if files is None else f"{key}={','.join(quote_path(f) for f in files)}")
    if len(expanded) > 1:  # a sweep would run every clean image with every noisy one, not matching pairs
        raise DIPError(
            "data.image and data.observed are both folders/globs; a sweep cannot pair them by name. "
            "Sweep one of them (data.observed=<folder> with data.image=null for no ground truth)."
        )
    return out


def split_image_argument(arguments: list[str]) -> tuple[list[str], list[str] | None]:
    """(the other arguments, the data.image files) for sweepers that loop over images themselves (Optuna)."""
    rest, files = [], None
    for arg in arguments:
        key, sep, value = arg.partition("=")
        found = expand_images(value) if sep and key.lstrip("+~") == "data.image" else None
        if found is None:
            rest.append(arg)
        else:
            files = found
    return rest, files
