"""`make test-hydra-range`: the tests that run the dip sweeper, against the oldest and the newest hydra-core of the
range it was checked against (HYDRA_RANGE in src/hydra_plugins/dip_sweepers/dip_sweepers.py).

The dip sweeper subclasses BasicSweeper, which is internal to Hydra, so a hydra-core release inside the range may
still break it. For each end of the range (the lower bound, and the newest release the registry has in the range)
this installs only that hydra-core into a temporary folder (`pip install --no-deps --target`; omegaconf and the rest
stay as installed), puts the folder first on PYTHONPATH, checks that Python imports Hydra from there, and runs the
tests. It needs the package registry, so `make test` does not run it.

    python experiments/hydra_range.py                          # tests/test_sweeps.py and the packed sweep
    python experiments/hydra_range.py --versions 1.3.5,1.3.6   # these releases instead of the range's two ends
    python experiments/hydra_range.py tests/test_sweeps.py -k crashed   # other pytest arguments
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/test_sweeps.py",
    "tests/test_packing.py::test_a_packed_sweep_gathers_into_the_table_of_the_same_sweep_run_one_by_one",
]


def hydra_range() -> str:
    """HYDRA_RANGE, read from the sweeper's source (importing it would import Hydra and PyTorch Lightning here)."""
    source = (ROOT / "src/hydra_plugins/dip_sweepers/dip_sweepers.py").read_text()
    return re.search(r'^HYDRA_RANGE = "([^"]+)"', source, re.MULTILINE).group(1)


def install(requirement: str, target: Path) -> tuple[str, str | None]:
    """Installs hydra-core alone into `target`: the version Python then imports from there, and why it does not
    import (None when it does)."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    subprocess.run([*pip, "--target", str(target), requirement], check=True)
    version = next(target.glob("hydra_core-*.dist-info")).name.removeprefix("hydra_core-").removesuffix(".dist-info")
    probe = "import hydra; print(hydra.__file__)"
    proc = subprocess.run([sys.executable, "-c", probe], env=environment(target), capture_output=True, text=True)
    if proc.returncode != 0:
        return version, f"import hydra fails: {proc.stderr.strip().splitlines()[-1]}"
    if not Path(proc.stdout.strip()).is_relative_to(target):
        raise SystemExit(f"error: Hydra was imported from {proc.stdout.strip()}, not from {target}")
    return version, None


def environment(target: Path) -> dict[str, str]:
    path = [str(target), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", help="hydra-core releases to test, comma-separated (default: the range's ends)")
    parser.epilog = f"Other arguments go to pytest (default: {' '.join(TESTS)})."
    args, pytest_args = parser.parse_known_args(argv)
    args.tests = pytest_args or TESTS
    spec = hydra_range()
    lower = next(s.version for s in SpecifierSet(spec) if s.operator == ">=")
    versions = args.versions.split(",") if args.versions else []
    requirements = [f"hydra-core=={v}" for v in versions] if versions else [f"hydra-core=={lower}"]
    if not versions:
        requirements.append(f"hydra-core{spec}")  # pip picks the newest release in the range
    results: dict[str, tuple[str, float]] = {}
    for requirement in requirements:
        with tempfile.TemporaryDirectory(prefix="hydra-range-") as tmp:
            version, broken = install(requirement, Path(tmp))
            if version in results:  # the range's newest release is its lower bound
                continue
            if broken:
                results[version] = (f"FAILED ({broken})", 0.0)
                continue
            print(f"\n== hydra-core {version} ({requirement}), from {tmp}", flush=True)
            tic = time.perf_counter()
            pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.tests]
            code = subprocess.run(pytest, cwd=ROOT, env=environment(Path(tmp))).returncode
            results[version] = ("passed" if code == 0 else f"FAILED (pytest exit {code})", time.perf_counter() - tic)
    print(f"\nhydra-core range {spec}, tests: {' '.join(args.tests)}")
    for version, (outcome, seconds) in results.items():
        print(f"  hydra-core {version}: {outcome} in {seconds:.0f} s")
    return 0 if all(outcome == "passed" for outcome, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
