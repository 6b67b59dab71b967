"""launcher=packed: a multirun's jobs trained in packs, each pack one batched model (dip_lightning.sweeps.packed).

    dip-run -m launcher=packed hydra.launcher.pack=8 data.image=photos/ seed=0,1,2,3 optimizer.lr=0.01,0.005

Every job gets its folder and `.hydra/` from Hydra's own run_job (with a task function that only records the job),
then all jobs are prepared (config checked, images read), grouped into packs of at most `pack` jobs that share task,
net, shapes and optimizer apart from the learning rate (run/packs.py: pack_key), and each pack is trained in
this process. A job that cannot be packed (another optimizer than Adam, task.optimize_input, a plain Lightning
callback) runs on its own; speed options pack with jobs of the same options. `pack=auto`: as many as the device's
free memory holds, from one run's estimated footprint.
Failed jobs write error.json as with the other launchers; the dip sweeper counts them.
"""
# no `from __future__ import annotations`: Hydra execs this module outside sys.modules, which breaks dataclasses

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.dip_sweepers.packed_launcher.PackedLauncher"
    pack: Any = 8  # jobs per pack at most, or "auto"
    n_parallel: int = 1  # packs at a time, each in its own process (one per GPU through gpu_lease, or CPU cores)


ConfigStore.instance().store(group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="dip_lightning")


def _collect(cfg: DictConfig):
    """The task function Hydra's run_job calls for each job here: it records the job, its folder and its logger
    names (read now, while Hydra's current job is this one)."""
    from dip_lightning.run.prepare import run_names

    return cfg, Path(HydraConfig.get().runtime.output_dir), run_names(cfg)


class PackedLauncher(Launcher):
    def _job_log_format(self) -> None:
        """The packs log as a job does ([dip_lightning][INFO] ...), not in Hydra's own format ([HYDRA]): the job
        logging config's console handler (its file handler names one job's file, and a pack trains several)."""
        import logging.config

        from omegaconf import OmegaConf

        conf = OmegaConf.to_container(self.config.hydra.job_logging, resolve=False)
        if not conf or "console" not in (conf.get("handlers") or {}):
            return
        conf["handlers"] = {"console": conf["handlers"]["console"]}
        conf.setdefault("root", {})["handlers"] = ["console"]
        conf["disable_existing_loggers"] = False
        logging.config.dictConfig(conf)

    def __init__(self, pack: Any = 8, n_parallel: int = 1) -> None:
        super().__init__()
        self.pack, self.n_parallel = pack, n_parallel
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from dip_lightning.run.job import Job
        from dip_lightning.sweeps.packed import run_packed

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs in packs of %s", len(job_overrides), self.pack)
        returns: List[JobReturn] = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            HydraConfig.instance().set_config(sweep_config)
            returns.append(
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=_collect,
                    config=sweep_config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        jobs = [Job(*r.return_value, overrides=list(o)) for r, o in zip(returns, job_overrides)]
        self._job_log_format()
        values = run_packed(jobs, self.pack, self.n_parallel)
        for ret, value in zip(returns, values):
            ret.return_value = value
            ret.status = JobStatus.COMPLETED
        return returns
