"""`make install`'s torch step, run by the new venv's python before the package is installed:

    python .ci/install_torch.py auto|cpu|cuda <pin file>

- an importable torch in pyproject.toml's range is already in the venv (a CUDA build, say): it is kept (with auto);
- no GPU (`nvidia-smi -L` lists none), or cpu: the CPU build of the torch that constraints-cpu.txt pins, from the
  first of: what pip's own indexes and find-links offer as a CPU build (+cpu; this project's machines keep one on
  disk), the PyTorch CPU index (TORCH_CPU_INDEX, https://download.pytorch.org/whl/cpu), and last, with a warning,
  the default index's build (on Linux x86_64 a CUDA build with its ~18 nvidia packages);
- a GPU, or cuda: the default index's torch in pyproject.toml's range (PyPI's Linux wheels are CUDA builds).

It writes <pin file> (torch==<the installed version>), the constraint the package is installed with afterwards, so
that no dependency replaces the torch chosen here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints-cpu.txt"
CPU_INDEX = os.environ.get("TORCH_CPU_INDEX", "https://download.pytorch.org/whl/cpu")


def say(message: str) -> None:
    print(f"install_torch: {message}", flush=True)


def pip(*args: str, check: bool = True) -> int:
    return subprocess.run([sys.executable, "-m", "pip", *args], check=check).returncode


def torch_range() -> str:
    """pyproject.toml's requirement on torch, e.g. '>=2.4'."""
    match = re.search(r'"torch\s*([<>=!~][^";]*)"', (ROOT / "pyproject.toml").read_text())
    return match.group(1).strip() if match else ""


def installed_torch() -> tuple[str, str | None] | None:
    """(version, CUDA version or None) of the torch this python imports, or None."""
    code = "import torch; print(torch.__version__); print(torch.version.cuda or '')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    version, cuda = (out.stdout.splitlines() + ["", ""])[:2]
    return version.strip(), cuda.strip() or None


def would_install(*args: str) -> list[str] | None:
    """The versions of torch that `pip install <args>` would install (dry run, no dependencies); None if it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        rc = pip("install", "--dry-run", "--no-deps", "-q", "--report", str(report), *args, check=False)
        if rc != 0 or not report.exists():
            return None
        entries = json.loads(report.read_text()).get("install", [])
    return [e["metadata"]["version"] for e in entries if e["metadata"]["name"].lower() == "torch"]


def has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return out.returncode == 0 and "GPU" in out.stdout


def install_cpu() -> str:
    offered = would_install("--ignore-installed", "-c", str(CONSTRAINTS), "torch")
    if offered and ("+cpu" in offered[0] or not sys.platform.startswith("linux")):  # elsewhere PyPI's is a CPU build
        pip("install", "-q", "-c", str(CONSTRAINTS), "torch")
        return f"the CPU build that pip's configured indexes offer ({offered[0]})"
    say(f"no CPU build of torch in pip's configured indexes; trying the PyTorch CPU index {CPU_INDEX}")
    rc = pip(
        "install",
        "-q",
        "--retries",
        "1",
        "--timeout",
        "30",
        "--index-url",
        CPU_INDEX,
        "-c",
        str(CONSTRAINTS),
        "torch",
        check=False,
    )
    if rc == 0:
        return f"the CPU build from {CPU_INDEX}"
    say(
        f"WARNING: {CPU_INDEX} could not be reached: installing the default index's torch, which on Linux x86_64 is "
        "a CUDA build (~18 nvidia packages, several GB). Point TORCH_CPU_INDEX at a CPU index, or put a CPU wheel "
        "where pip finds it (pip's find-links), to get the CPU build."
    )
    pip("install", "-q", "-c", str(CONSTRAINTS), "torch")
    return "the default index's build"


def install_cuda() -> str:
    spec = torch_range()
    pip("install", "-q", f"torch{spec}")
    return f"the default index's torch{spec}"


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "auto"
    pin = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    if mode not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"install_torch: TORCH_BUILD={mode!r}; expected auto, cpu or cuda")
    current = installed_torch()
    spec = torch_range()
    if mode == "auto" and current is not None and would_install("--no-index", f"torch{spec}") == []:
        how = f"kept: the installed torch satisfies pyproject.toml's torch{spec}"
    elif current is not None and mode != "auto" and (current[1] is None) != (mode == "cpu"):
        say(f"TORCH_BUILD={mode}: replacing the installed torch {current[0]}")
        pip("uninstall", "-q", "-y", "torch")
        how = install_cuda() if mode == "cuda" else install_cpu()
    elif mode == "cuda" or (mode == "auto" and has_gpu()):
        how = install_cuda()
    else:
        how = install_cpu()
    current = installed_torch()
    if current is None:
        raise SystemExit("install_torch: torch was installed but does not import; see pip's output above")
    version, cuda = current
    build = f"CUDA {cuda} build" if cuda else "CPU build"
    say(f"torch {version} ({build}): {how}")
    if mode == "cuda" and not cuda:
        say("WARNING: TORCH_BUILD=cuda, but the torch installed is a CPU build (pip's find-links offered it)")
    if pin is not None:
        pin.write_text(f"torch=={version}\n")


if __name__ == "__main__":
    main()
