"""The Hydra entry point (`dip-run`, or `python -m dip_lightning.train`) and the assembly of a run.

compose config -> build net, data, task -> load images, simulate the observation -> fit (loop/engine.py) -> the
results (run_results.py) and the run's last lines (run_report.py). Returns the metric that sweepers optimise
(`optimized_metric`, psnr_best by default).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from . import (
    project,  # noqa: F401  (registers ${dip.project:...}, which conf/paths reads, before Hydra composes)
    quiet,  # noqa: F401  (no Lightning or W&B banners in any process that trains: it imports this module)
)
from .errors import DIPError

log = logging.getLogger("dip_lightning")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def build(cfg: DictConfig, **objects: Any) -> Any:
    """hydra.utils.instantiate of `cfg`, called with `objects` (what is built already: a net, an optimizer, the
    speed options) as they are: instantiate's own keyword arguments would turn a dataclass into a config. A DIPError
    raised by a constructor comes out as itself, any other failure as one naming the target."""
    try:
        made = hydra.utils.instantiate(cfg, _partial_=True) if objects else hydra.utils.instantiate(cfg)
        return made(**objects) if objects else made
    except DIPError:
        raise
    except Exception as err:
        cause = err
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, DIPError):
            raise cause from None
        raise DIPError(f"Could not build {cfg.get('_target_', 'an object')} from the config: {cause}") from None


@dataclass
class PreparedRun:
    """One run, built and checked, up to the training loop: what an unpacked run (`run`) and a pack of runs
    (dip_lightning.packing) share."""

    cfg: DictConfig
    run_dir: Path
    net: Any
    datamodule: Any
    task: Any
    data: Any
    callbacks: list
    best: Any
    checkpointing: Any
    speed: Any
    data_warnings: list[str]
    names: tuple[str, str | None]  # the logger's run name and group (the job's overrides, the sweep)
    metrics: dict = field(default_factory=dict)  # name -> Metric: the scores beside PSNR (config_presets.py)
    loggers: list = field(default_factory=list)  # built when its loop starts (loop/engine.train_runs)
    pack_size: int = 1  # how many runs its loop trains together


def prepare_run(
    cfg: DictConfig, run_dir: str | os.PathLike, names: tuple[str, str | None] | None = None
) -> PreparedRun:
    """Check the config, build net, data, task and callbacks, load the resume state's reference. Nothing runs.
    `names`: the logger's run name and group, where Hydra's current job is not this run's (a packed job)."""
    from .callbacks.best_iterate import BestIterate
    from .callbacks.roles import configured
    from .checkpoint import Checkpointing, find_checkpoint
    from .config_presets import configured_metrics
    from .cpu import set_threads
    from .gt_free import default_rule
    from .run_identity import run_identity
    from .speed import SpeedOptions
    from .validate import validate_config

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")
    from .run_folder import check_unused, check_writable

    run_dir = Path(run_dir)
    validate_config(cfg)  # values and types, before anything is built or computed
    speed = SpeedOptions.from_config(cfg)
    metrics = configured_metrics(cfg)  # recorded in cfg: the run's config.yaml holds what scored it
    check_writable(run_dir)
    check_unused(run_dir, cfg.get("resume"))
    threads, why = set_threads(cfg.get("cpu_threads"))  # OpenMP threads on busy cores collapse: see cpu.py
    log.info("CPU threads: %d (%s)", threads, why)
    net, datamodule, task, data = build_run(cfg, speed)
    task.prepare(data)
    data_warnings = task.data_warnings()
    for warning in data_warnings:
        log.warning("%s", warning)
    log.info(
        "task=%s image=%s output %s, net %s with %.2fM parameters",
        task.name,
        data.name,
        "x".join(map(str, task.z.shape[-2:])),
        type(net).__name__,
        sum(p.numel() for p in net.parameters()) / 1e6,
    )

    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None:
            callbacks.append(configured(build(node), name))  # its name files its checkpoint state
    best = next((c for c in callbacks if isinstance(c, BestIterate)), None)
    if best is None:  # the best iterate is always captured
        best = BestIterate().named("best_iterate")
        callbacks.append(best)
    from .callbacks.roles import stopping_rules

    rule = default_rule(cfg, task, data, callbacks)  # gt_free.py
    if rule is not None:
        rule.named("without_ground_truth")
        log.info(
            "No ground truth: %s chooses the result (without_ground_truth=%s)",
            type(rule).__name__,
            cfg.without_ground_truth,
        )
        callbacks.append(rule)
    for c in stopping_rules(callbacks):  # rules that change the run (self-validation holds pixels out of the loss)
        c.attach(task)
    checkpointing = Checkpointing(
        run_dir,
        cfg.get("checkpoint_every"),
        find_checkpoint(cfg.get("resume"), run_dir),
        identity=run_identity(cfg, data),
        iterations=int(cfg.iterations),
    )
    return PreparedRun(
        cfg,
        run_dir,
        net,
        datamodule,
        task,
        data,
        callbacks,
        best,
        checkpointing,
        speed,
        data_warnings,
        names or run_names(cfg),
        metrics=metrics,
    )


def run(cfg: DictConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """One DIP restoration (an ensemble of seeds with ensemble=N); returns metrics.json's content. Nothing is
    written to run_dir unless it succeeds."""
    from .run_folder import check_writable, locked
    from .speed import SpeedOptions
    from .validate import validate_config

    validate_config(cfg)  # a bad value is refused before the run folder is made
    SpeedOptions.from_config(cfg)
    with locked(check_writable(Path(run_dir))):  # one process per run folder
        if str(cfg.get("resume")) == "auto" and (Path(run_dir) / "metrics.json").is_file():
            return finished_run(cfg, Path(run_dir))
        if cfg.get("ensemble", 1) != 1:
            from .loop.ensemble import run_ensemble

            return run_ensemble(cfg, run_dir)
        return run_prepared(prepare_run(cfg, run_dir))


def finished_run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """resume=auto on a folder whose run has finished: its metrics, once its config and observation are this
    run's (a resumed sweep runs only the jobs that had not finished)."""
    from .run_folder import finished_metrics
    from .run_results import observation_checksum

    with_noise = OmegaConf.merge(cfg, {"ensemble": 1})  # an ensemble's observation is its first member's
    prepared = prepare_run(with_noise, run_dir)
    if cfg.get("ensemble", 1) == 1:  # with the rule a run without ground truth gets, as its config.yaml records it
        cfg = prepared.cfg
    metrics = finished_metrics(cfg, run_dir, observation_checksum(prepared.task.observed))
    log.info("%s had finished (metrics.json): kept, not run again (resume=auto)", run_dir)
    return metrics


def run_prepared(r: PreparedRun) -> dict[str, Any]:
    """Train and finish a prepared run on its own (the loop with one run, its loggers live)."""
    from .loop.engine import train_runs

    (result,) = train_runs([r])
    if isinstance(result, Exception):
        raise result
    return result


def build_run(cfg: DictConfig, speed=None):
    """net, data module, task and the loaded data. `net.output_channels: null` follows the image's channels: the net
    is built again for a gray image (same seed, so the same weights as one built for 1 channel directly). `speed`:
    the config's SpeedOptions, read from it where not given."""
    import torch

    from .speed import SpeedOptions

    speed = speed if speed is not None else SpeedOptions.from_config(cfg)
    from pytorch_lightning import seed_everything

    follow = "output_channels" in cfg.net and cfg.net.output_channels is None
    # Python's, numpy's and torch's global generators (a task or net that draws from any of them is reproducible);
    # torch's seeds the net's initial weights. z, noise, masks and jitter have generators of their own.
    seed_everything(int(cfg.seed), verbose=False)
    net = build(cfg.net, **({"output_channels": 3} if follow else {}))
    datamodule = build(cfg.data)
    task = build(cfg.task, net=net, optimizer=build(cfg.optimizer), speed=speed)
    # the task's net: a task may wrap it (feature inversion generates large and crops, so reads images uncropped)
    data = datamodule.load(task.net.size_multiple, task.observed_scale, task.net.min_size)
    if datamodule.pad:
        check_padded_size(task, data, datamodule.pad)
    if data.clean is not None or data.observed is not None:
        channels = task.output_shape(data)[0]
    else:  # the inputs are extras (flash/no-flash): the first one's channels
        channels = next(iter(data.extras.values())).shape[1] if data.extras else 3
    if follow and channels != 3:
        torch.manual_seed(int(cfg.seed))
        net = build(cfg.net, output_channels=channels)
        task = build(cfg.task, net=net, optimizer=build(cfg.optimizer), speed=speed)
    return task.net, datamodule, task, data


def check_padded_size(task, data, pad: int) -> None:
    """data.pad keeps an image at a size the net's multiple may not divide: the net must still make an output of
    that size (a skip net with strided downsampling does, cropping in its concatenations as the reference's)."""
    import torch

    shape = task.output_shape(data)
    h, w = task.net.input_size(shape[1], shape[2])
    training = task.net.training
    task.net.eval()  # no BatchNorm statistics are updated by this probe
    with torch.no_grad():
        out = task.net(torch.zeros(1, task.net.input_depth, h, w))
    task.net.train(training)
    if tuple(out.shape[-2:]) != tuple(shape[1:]):
        raise DIPError(
            f"data.pad={pad} makes {data.name!r} {shape[2]}x{shape[1]} pixels, but the net's output for it is "
            f"{out.shape[-1]}x{out.shape[-2]}: data.pad needs a net that keeps such sizes (net=skip with "
            "downsample_mode=stride, as the reference's barbara). Set data.pad=0 to crop to the net's multiple."
        )


def fit(trainer, module, **data) -> None:
    """trainer.fit; torch's refusal of an op without a deterministic CUDA kernel becomes the one-paragraph error."""
    try:
        trainer.fit(module, **data)
    except RuntimeError as err:
        if "deterministic implementation" not in str(err):
            raise
        raise DIPError(
            f"trainer.deterministic=true, but the run uses an operation that has no deterministic CUDA kernel "
            f"in this torch version (torch: {str(err).splitlines()[0]}). Set trainer.deterministic=false, or choose "
            "net options that avoid that operation (net.pad, net.upsample_mode)."
        ) from None


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def run_names(cfg: DictConfig) -> tuple[str, str | None]:
    """The W&B run name (the job's overrides) and group (the sweep's name in a multirun)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        name = hc.job.override_dirname or hc.job.name
        group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
        return name, group
    except ValueError:  # not under Hydra (tests call run() directly)
        return "run", None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .checkpoint import Interrupted
    from .data.io import write_json
    from .sweeps.gpu_lease import gpu_lease
    from .sweeps.slurm import not_requeued, requeue

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        with gpu_lease(cfg.get("gpu_lease")):  # one GPU per running job, taken before CUDA starts
            metrics = run(cfg, run_dir)
    except Interrupted as err:  # SIGTERM / Ctrl-C: the checkpoint is written; exit as the signal asks
        log.error("%s", err)
        if hc.mode == RunMode.MULTIRUN:
            write_json(run_dir / "error.json", {"error": str(err), "overrides": list(hc.overrides.task)})
        refused = requeue(err.signum)  # submitit's preemption signal: its handler requeues the job and exits
        if refused is None:
            raise SystemExit(128 + err.signum)
        message = not_requeued(refused, err)  # timed out more often than hydra.launcher.max_num_timeout
        log.error("%s", message)
        write_json(run_dir / "error.json", {"error": message, "overrides": list(hc.overrides.task)})
        return float("nan")
    except DIPError as err:
        message = str(err)
        log.error("%s", message)
        if hc.mode == RunMode.MULTIRUN:  # keep the sweep going; dip-gather lists the failure
            write_json(run_dir / "error.json", {"error": message, "overrides": list(hc.overrides.task)})
            return float("nan")
        print(f"\nerror: {message}", file=sys.stderr)
        raise SystemExit(1)
    except Exception as err:
        if hc.mode == RunMode.MULTIRUN:
            write_json(
                run_dir / "error.json", {"error": f"{type(err).__name__}: {err}", "overrides": list(hc.overrides.task)}
            )
        raise
    (run_dir / "error.json").unlink(missing_ok=True)  # an earlier attempt's (a requeued or resumed job)
    from .packing.pack import optimized_value

    return optimized_value(cfg, metrics)


def unquoted_non_ascii(args: list[str]) -> str | None:
    """The quoting hint for an override whose value has non-ASCII characters outside quotes: Hydra's override
    lexer stops at them with a LexerNoViableAltException that says nothing about quotes."""
    for arg in args:
        key, eq, value = arg.partition("=")
        if arg.startswith("-") or not eq or value.isascii():
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            continue
        return (
            f"the override {arg!r} has non-ASCII characters, which Hydra's override parser only takes inside "
            f"quotes. Write it as {key}='{value}', in a shell: \"{key}='{value}'\"."
        )
    return None


def main() -> None:
    hint = unquoted_non_ascii(sys.argv[1:])
    if hint:
        print(f"error: {hint}", file=sys.stderr)
        raise SystemExit(1)
    if os.environ.get("HYDRA_FULL_ERROR"):  # the user asked for Hydra's full tracebacks
        hydra_main()
        return
    from hydra.errors import HydraException

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's own errors reach this function, to be told in one paragraph
    try:
        hydra_main()
    except DIPError as err:  # raised before the run starts (run_folder.RunFolderGuard: a used folder)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except HydraException as err:  # a config that does not compose (a MissingConfigException is an OSError too)
        cause = f" ({err.__cause__})" if err.__cause__ is not None else ""
        print(f"error: {err}{cause}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:  # Hydra creates the run folder and its log file before dip-run's code runs
        print(
            f"error: the run folder could not be created or written ({err.strerror or err}: "
            f"{err.filename or ''}). Choose a writable folder: hydra.run.dir=<folder> (hydra.sweep.dir=<folder> "
            "with -m), or run from a writable directory.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
