"""Record a benchmark's table in experiments/RESULTS.md, each script in its own marked section."""

from __future__ import annotations

import os
import platform
import re
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# Recorded results\n\nEach section is rewritten by the script named in it; figures name the machine they came "
    "from.\n"
)


def machine() -> str:
    """A short description of this machine: CPU model and core count, or the GPU."""
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def record(section: str, markdown: str, path: Path = RESULTS) -> Path:
    """Replace (or append) the section `section` of RESULTS.md with `markdown`, atomically."""
    text = path.read_text() if path.exists() else HEADER
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".RESULTS.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
