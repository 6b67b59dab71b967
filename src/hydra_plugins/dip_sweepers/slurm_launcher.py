"""launcher=submitit_slurm's launcher: hydra-submitit-launcher's SlurmLauncher (conf/launcher/submitit_slurm.yaml sets
it as hydra.launcher._target_; every hydra.launcher.* option is that plugin's), with what a sweep needs of it:

- sbatch's refusal of the jobs (a GPU asked of a CPU partition: "Invalid generic resource (gres) specification") is
  a DIPError, one paragraph naming the option to change (dip_lightning.sweeps.slurm.sbatch_refused), instead of
  submitit's FailedJobError traceback (which the dip sweeper took for a broken launcher and submitted again);
- every job is waited for, and one that ends without a result (scancel, killed, out of time or memory) is that
  job's failure, its reason in its folder's error.json, while the others finish: the plugin's
  `[j.results()[0] for j in jobs]` raised at the first such job and dropped the results of the others;
- job states come from sacct, else from squeue (`SqueueWatcher`): without accounting (sacct disabled) submitit
  logged a warning at every poll and never learned that a cancelled job had ended, so it waited for it forever.

Preemption and requeue in the jobs themselves: dip_lightning/sweeps/slurm.py and docs/cluster.md.
"""
# no `from __future__ import annotations`: Hydra execs this module outside sys.modules, which breaks dataclasses

import logging
import subprocess
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob
except ImportError:  # the optional hydra-submitit-launcher is not installed
    SlurmLauncher = SlurmInfoWatcher = SlurmJob = BaseQueueConf = None

log = logging.getLogger(__name__)


if SlurmLauncher is not None:

    class SqueueWatcher(SlurmInfoWatcher):
        """submitit's job-state watcher, with squeue where sacct cannot answer (no accounting storage, or its daemon
        down). squeue knows a job until MinJobAge after its end; a job it no longer lists has ENDED."""

        def __init__(self, delay_s: int = 600) -> None:
            super().__init__(delay_s=delay_s)
            self.sacct_works: Optional[bool] = None

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            output = None
            if self.sacct_works is not False:
                try:
                    output = subprocess.check_output(command, stderr=subprocess.PIPE, timeout=120)
                    self.sacct_works = True
                except (OSError, subprocess.SubprocessError) as err:
                    if self.sacct_works is None:
                        said = (getattr(err, "stderr", None) or b"").decode(errors="replace").strip()
                        log.info("sacct cannot tell the jobs' states here (%s): squeue does", said or err)
                        self.sacct_works = False
            if output is None:
                output = self._squeue()
            if output is not None:
                self._info_dict.update(self.read_info(output))
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

        def _squeue(self) -> Optional[str]:
            """squeue's answer in sacct's format; the jobs it does not list (any more) are ENDED."""
            waiting = self._registered - self._finished
            ids = sorted({x.split("_")[0] for x in waiting})
            if not ids:
                return None
            command = ["squeue", "-h", "-r", "--states=all", "-o", "%i|%T|%N", "-j", ",".join(ids)]
            try:
                proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.SubprocessError):
                return None
            if proc.returncode != 0 and "invalid job id" not in proc.stderr.lower():
                return None  # squeue did not answer: the states stay as they were
            lines = [line for line in proc.stdout.splitlines() if line.count("|") == 2]
            listed = {line.split("|", 1)[0] for line in lines}
            lines += [f"{job_id}|ENDED|" for job_id in sorted(waiting - listed)]
            return "\n".join(["JobID|State|NodeList", *lines])

    class WatchedSlurmJob(SlurmJob):
        watcher = SqueueWatcher(delay_s=600)  # one for every job, as submitit's own

    class DipSlurmLauncher(SlurmLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            """BaseSubmititLauncher.launch (hydra-submitit-launcher 1.2), with the submission's refusal told and
            every job's outcome collected."""
            import submitit
            from submitit.core.utils import FailedJobError, UncompletedJobError

            from dip_lightning.errors import DIPError
            from dip_lightning.sweeps.slurm import JobLost, lost_job, sbatch_refused

            assert self.config is not None and len(job_overrides) > 0
            executor = submitit.AutoExecutor(
                cluster=self._EXECUTOR,
                folder=self.params["submitit_folder"],
                slurm_max_num_timeout=self.params["max_num_timeout"],
            )
            baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
            params = {
                k if k in baseparams else f"{self._EXECUTOR}_{k}": v
                for k, v in self.params.items()
                if k not in ("submitit_folder", "max_num_timeout")
            }
            executor.update_parameters(**params)
            log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
            job_params: List[Any] = []
            for idx, overrides in enumerate(job_overrides):
                idx = initial_job_idx + idx
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
            try:
                submitted = executor.map_array(self, *zip(*job_params))
            except FailedJobError as err:
                raise DIPError(sbatch_refused(str(err), self.params)) from None
            # submitit builds an array's jobs as its own SlurmJob: the same jobs, watched by the SqueueWatcher
            jobs = [WatchedSlurmJob(folder=executor.folder, job_id=j.job_id, tasks=j._tasks) for j in submitted]
            returns = []
            for idx, (job, overrides) in enumerate(zip(jobs, job_overrides)):
                try:
                    returns.append(job.results()[0])
                except (UncompletedJobError, FailedJobError) as err:  # ended without a result, or crashed outside Hydra
                    folder = self._job_folder(list(overrides), initial_job_idx + idx)
                    state = job.state
                    if isinstance(err, FailedJobError):
                        state = "FAILED"
                    message = lost_job(folder, job.job_id, state, job.paths.stderr)
                    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED, working_dir=str(folder))
                    ret.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(folder)}}})
                    ret.return_value = JobLost(message)
                    returns.append(ret)
            return returns

        def _job_folder(self, overrides: List[str], idx: int) -> Path:
            """The folder Hydra gives job `idx` (hydra.sweep.dir / hydra.sweep.subdir, as run_job computes it)."""
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(cfg.hydra.job):
                cfg.hydra.job.num = idx
                cfg.hydra.job.id = f"job_id_for_{idx}"
            from hydra.core.hydra_config import HydraConfig

            previous = HydraConfig.instance().cfg
            HydraConfig.instance().set_config(cfg)  # ${hydra:...} in the folder's name reads it
            try:
                return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
            finally:
                if previous is not None:
                    HydraConfig.instance().cfg = previous
