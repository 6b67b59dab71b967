"""dip-run's sweepers, found by Hydra in the `hydra_plugins` namespace package (conf/train.yaml selects `dip`).

- `dip`: Hydra's basic sweeper, plus data.image=<folder or glob> becoming one job per image
  (dip_lightning.sweeps.images), and a failed job (crash, not only a DIPError) is logged, not raised, so the
  other jobs of the sweep still run; dip-gather lists it from its error.json.
- `dip_optuna`: the Optuna sweeper; with data.image=<folder or glob> every trial runs one job per image and
  Optuna gets the mean of their returns (the mean best PSNR over the images).
"""
# no `from __future__ import annotations`: Hydra execs this module outside sys.modules, which breaks dataclasses

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence

import hydra
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from packaging.specifiers import SpecifierSet

from dip_lightning.sweeps.images import expand_arguments, quote_path, split_image_argument

log = logging.getLogger(__name__)

# The hydra-core versions that DipSweeper was checked against (`make test-hydra-range` runs the sweep tests with the
# oldest and the newest of them); pyproject.toml requires the same range (tests/test_sweeps.py checks that).
HYDRA_RANGE = ">=1.3.2,<1.4"
if not SpecifierSet(HYDRA_RANGE).contains(hydra.__version__, prereleases=True):
    warnings.warn(
        f"hydra-core {hydra.__version__} is outside {HYDRA_RANGE}, the range that the dip sweeper "
        "(src/hydra_plugins/dip_sweepers/dip_sweepers.py) was checked against: it subclasses Hydra's internal "
        "BasicSweeper. Install a hydra-core in that range, or check this one with `make test-hydra-range` and widen "
        "HYDRA_RANGE there and in pyproject.toml.",
        RuntimeWarning,
    )


@dataclass
class DipSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.dip_sweepers.dip_sweepers.DipSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="dip", node=DipSweeperConf, provider="dip_lightning")


def _failed(ret: JobReturn) -> bool:
    return ret.status == JobStatus.FAILED


def _output_dir(ret: JobReturn) -> Path | None:
    output_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg is not None else None
    return None if output_dir is None else Path(output_dir)


def _failed_job(ret: JobReturn) -> bool:
    """A crash, or a job that ended with a DIPError: it returned NaN and left error.json in its folder, or could not
    write even that (a NaN and no metrics.json; a run without ground truth returns NaN beside its metrics.json)."""
    if _failed(ret):
        return True
    folder = _output_dir(ret)
    if folder is None:
        return False
    if (folder / "error.json").exists():
        return True
    value = ret.return_value
    return isinstance(value, float) and math.isnan(value) and not (folder / "metrics.json").exists()


class KeepGoingLauncher:
    """Wraps a launcher: a crashed job is logged and counted, and handed on as a completed job that returned NaN (as
    a job that ends with a DIPError does), since BasicSweeper.sweep reads every return_value, which re-raises a
    crashed job's exception and so would stop the sweep before its next batch.

    When the launcher itself breaks (a joblib worker process killed: TerminatedWorkerError, which takes every job in
    flight with it), the jobs that left no outcome (no metrics.json, no error.json) are launched again, once; a job
    whose worker dies again gets error.json saying so. Each job's outcome is in its folder whatever happens to the
    others, and the sweep goes on."""

    ATTEMPTS = 2

    def __init__(self, launcher, sweep_dir: Path | None = None, numbered: bool = False):
        self.launcher, self.jobs, self.failures = launcher, 0, 0
        self.sweep_dir, self.numbered = sweep_dir, numbered  # numbered: job folders are <sweep dir>/<job number>
        self.silent: list[str] = []  # failed jobs whose folder has no error.json (a full disk, or never started)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from dip_lightning.errors import DIPError

        try:
            rets = list(self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx))
        except DIPError:  # the launcher refused the jobs (sbatch: a GPU asked of a CPU partition): none ran
            raise
        except OSError as err:  # Hydra could not write a job's record (.hydra/, its log): the disk, not the job
            if self.sweep_dir is None or not self.numbered:
                raise
            rets = [self._from_folder(o, initial_job_idx + i) for i, o in enumerate(job_overrides)]
            first = next((i for i in range(len(rets)) if self._outcome(initial_job_idx + i) is None), 0)
            log.error(
                "job %s could not be started: Hydra could not write its record (.hydra/, %s: %s); the jobs after it "
                "in this batch were not started either",
                self._folder(initial_job_idx + first),
                err.strerror or type(err).__name__,
                err.filename or self.sweep_dir,
            )
        except Exception as err:  # the launcher broke, not a job: its job folders say what finished
            if self.sweep_dir is None or not self.numbered:
                raise
            rets = self._recover(job_overrides, initial_job_idx, err)
        self.jobs += len(job_overrides)
        self.failures += sum(_failed_job(r) for r in rets)
        self.silent += [
            str(_output_dir(r))
            for r in rets
            if _failed_job(r) and _output_dir(r) is not None and not (_output_dir(r) / "error.json").exists()
        ]
        for i, r in enumerate(rets):
            if not _failed(r):
                continue
            try:
                r.return_value  # raises the job's exception: JobReturn's public way to it
            except Exception as err:
                log.error(
                    "job %s (%s) failed: %s: %s", r.working_dir, " ".join(r.overrides or []), type(err).__name__, err
                )
            rets[i] = dataclasses.replace(r, status=JobStatus.COMPLETED)
            rets[i].return_value = math.nan
        return rets

    def _folder(self, idx: int) -> Path:
        return self.sweep_dir / str(idx)

    def _outcome(self, idx: int) -> str | None:
        folder = self._folder(idx)
        return "ok" if (folder / "metrics.json").exists() else "failed" if (folder / "error.json").exists() else None

    def _recover(self, job_overrides, initial_job_idx: int, err: Exception) -> list[JobReturn]:
        from dip_lightning.run.job import write_error

        log.error("the launcher broke (%s: %s); launching again the jobs that left no outcome", type(err).__name__, err)
        for attempt in range(2, self.ATTEMPTS + 1):
            todo = [i for i in range(len(job_overrides)) if self._outcome(initial_job_idx + i) is None]
            for start, stop in _runs_of(todo):  # contiguous jobs keep their numbers (and so their folders)
                try:
                    self.launcher.launch(job_overrides[start:stop], initial_job_idx=initial_job_idx + start)
                except Exception as again:
                    log.error("attempt %d of jobs %d-%d broke too (%s)", attempt, start, stop - 1, again)
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            if self._outcome(idx) is None:
                write_error(
                    self._folder(idx),
                    f"The worker process running this job died {self.ATTEMPTS} times ({type(err).__name__}"
                    ": killed by a signal, or by the out-of-memory killer: see dmesg), so it has no result. "
                    "Run it again alone to see why, or lower its memory (data.crop, a smaller net); "
                    "resume=auto continues the sweep without its finished jobs.",
                    list(overrides),
                )
        return [self._from_folder(o, initial_job_idx + i) for i, o in enumerate(job_overrides)]

    def _from_folder(self, overrides: Sequence[str], idx: int) -> JobReturn:
        """A job's return as its folder tells it (its metrics.json's value, NaN without one)."""
        ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
        ret.return_value = _job_value(self._folder(idx))
        ret.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(self._folder(idx))}}})
        return ret


def _runs_of(indices: list[int]) -> list[tuple[int, int]]:
    """[start, stop) ranges of consecutive indices."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _job_value(folder: Path) -> float:
    """What a finished job returned to the sweeper, from its metrics.json (NaN when it failed)."""
    import json

    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        config = OmegaConf.load(folder / "config.yaml")
    except (OSError, ValueError):
        return math.nan
    from dip_lightning.run.packs import optimized_value

    return optimized_value(config, metrics)


class DipSweeper(BasicSweeper):
    """Hydra's BasicSweeper.sweep, run on the arguments with their image folders and globs expanded and through a
    KeepGoingLauncher; a sweep with failed jobs exits with status 1 once every job has run. It relies on BasicSweeper
    (internal to Hydra, hence HYDRA_RANGE) launching every batch through self.launcher.launch."""

    def sweep(self, arguments: List[str]) -> Any:
        from dip_lightning.errors import DIPError
        from dip_lightning.run.folder import check_same_jobs, check_sweep_unused, locked, resuming

        hc = self.config.hydra
        numbered = OmegaConf.to_container(hc, resolve=False).get("sweep", {}).get("subdir") == "${hydra.job.num}"
        sweep_dir = Path(str(hc.sweep.dir))
        self.launcher = launcher = KeepGoingLauncher(self.launcher, sweep_dir, numbered)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:  # one sweep per folder for its whole life: a second one started beside it is refused, not mixed in
            with locked(sweep_dir):
                check_sweep_unused(sweep_dir, self.config.get("resume"))  # again, under the lock
                arguments = expand_arguments(list(arguments))
                if numbered and resuming(self.config.get("resume")):  # before Hydra rewrites any job's record
                    ignored = tuple(hc.job.config.override_dirname.exclude_keys)
                    check_same_jobs(sweep_dir, self.jobs(arguments), ignored)
                returns = super().sweep(arguments)
        except DIPError as err:
            log.error("%s", err)
            raise SystemExit(1) from None
        if launcher.failures:  # the sweep ran every job; its exit status still says that some failed
            log.error("%s", failures_message(launcher, sweep_dir))
            raise SystemExit(1)
        return returns

    def jobs(self, arguments: List[str]) -> List[List[str]]:
        """Every job's overrides, in the order BasicSweeper.sweep numbers them (its own parsing and splitting)."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides([*self._parse_config(), *arguments])
        return [list(job) for batch in self.split_arguments(parsed, None) for job in batch]


def failures_message(launcher: KeepGoingLauncher, sweep_dir: Path) -> str:
    """The sweep's last line when jobs failed: how many, where each says why, and how to go on."""
    from dip_lightning.run.folder import free_mb

    message = f"{launcher.failures} of {launcher.jobs} jobs failed; the others' results are in place."
    if launcher.silent:
        message += (
            f" Failed with error.json in their folder: {launcher.failures - len(launcher.silent)}; failed without an "
            f"outcome there: {', '.join(launcher.silent)} (the lines above say why)."
        )
    else:
        message += " Each failed job has error.json in its folder."
    if free_mb(sweep_dir) < 1:
        message += f" The disk holding {sweep_dir} is full (under 1 MB free): free some space first."
    return (
        f"{message} dip-gather {sweep_dir} lists every job; run the same command with resume=auto to run the failed "
        "jobs again (the finished ones are kept)."
    )


class PerImageLauncher:
    """Wraps a launcher: each job becomes one job per image; the returns are averaged back into one per job."""

    def __init__(self, launcher, images: list[str]):
        self.launcher, self.images = launcher, images
        self.next_idx = 0  # our own job numbers: the sweeper counts trials, we launch trials x images

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        expanded = [[*o, f"data.image={quote_path(img)}"] for o in job_overrides for img in self.images]
        rets = self.launcher.launch(expanded, initial_job_idx=self.next_idx)
        self.next_idx += len(expanded)
        out, n = [], len(self.images)
        for i, overrides in enumerate(job_overrides):
            values = [float(r.return_value) for r in rets[i * n : (i + 1) * n] if not _failed(r)]
            values = [v for v in values if math.isfinite(v)]
            mean = sum(values) / len(values) if values else math.nan  # a trial with no good image fails
            log.info("trial %s: mean %.3f over %d of %d images", " ".join(overrides), mean, len(values), n)
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            ret.return_value = mean
            out.append(ret)
        return out


try:
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the optional hydra-optuna-sweeper is not installed
    OptunaSweeper = None

if OptunaSweeper is not None:

    @dataclass
    class DipOptunaSweeperConf(OptunaSweeperConf):
        _target_: str = "hydra_plugins.dip_sweepers.dip_sweepers.DipOptunaSweeper"

    ConfigStore.instance().store(
        group="hydra/sweeper", name="dip_optuna", node=DipOptunaSweeperConf, provider="dip_lightning"
    )

    class DipOptunaSweeper(OptunaSweeper):
        """Hydra's Optuna sweeper, with data.image=<folder or glob> run per image (PerImageLauncher), and a study
        continued from its storage sampling on from where it was (`continued_sampler`), not from its start again."""

        def sweep(self, arguments: List[str]) -> None:
            self.sweeper.sampler = self.continued_sampler()
            rest, images = split_image_argument(list(arguments))
            if images:
                log.info("optuna: every trial runs %d images; the objective is their mean", len(images))
                self.sweeper.launcher = PerImageLauncher(self.sweeper.launcher, images)
            return self.sweeper.sweep(rest)

        def continued_sampler(self) -> Any:
            """The sampler for this sweep. A study continued from persistent storage (hydra.sweeper.storage, e.g.
            sqlite:///optuna.db) that already holds N trials gets its sampler built again with seed + N: with the
            seed as configured (sampler.seed: 0 in conf/hparams_search/dip_optuna.yaml) it would draw the study's
            first trials again, exactly (TPE's random start-up trials come first). A new study, one without a
            storage or a name, an unseeded sampler and a grid (which skips the points its storage holds) keep the
            sampler as it is."""
            impl = self.sweeper
            config = getattr(impl, "config", None)  # set by setup()
            node = OmegaConf.select(config, "hydra.sweeper.sampler") if config is not None else None
            if impl.storage is None or impl.study_name is None or node is None or node.get("_partial_"):
                return impl.sampler
            if node.get("seed") is None:
                return impl.sampler
            import optuna

            try:
                done = len(optuna.load_study(study_name=impl.study_name, storage=impl.storage).trials)
            except KeyError:  # no such study in the storage yet: it starts here, with the seed as configured
                return impl.sampler
            if done == 0:
                return impl.sampler
            seed = int(node.seed) + done
            log.info(
                "optuna: study %r holds %d trials; its sampler continues with seed %d (sampler.seed %d + %d) so "
                "that it does not draw the first trials again",
                impl.study_name,
                done,
                seed,
                int(node.seed),
                done,
            )
            return hydra.utils.instantiate(node, seed=seed)
