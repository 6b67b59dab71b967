"""Preparing a run: check the config, build net, data module and task from it (each object whole, before the next),
load the images and make the observation, build the callbacks and the run's checkpointing. Nothing trains here."""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from ..callbacks.best_iterate import BestIterate
from ..callbacks.roles import configured, stopping_rules
from ..checkpoint import Checkpointing, find_checkpoint
from ..checkpoint.identity import run_identity
from ..config.compose import build, configured_metrics
from ..config.validate import validate_config
from ..cpu import set_threads
from ..errors import DIPError
from ..speed import SpeedOptions
from .folder import check_unused, check_writable
from .gt_free import default_rule

log = logging.getLogger("dip_lightning")


@dataclass
class PreparedRun:
    """One run, built and checked, up to the training loop (run/fit.train_runs trains it, alone or in a pack)."""

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
    names: RunNames  # how its loggers name it
    metrics: dict = field(default_factory=dict)  # name -> Metric: the scores beside PSNR (config/compose.py)


def prepare_run(cfg: DictConfig, run_dir: str | os.PathLike, names: RunNames | None = None) -> PreparedRun:
    """Check the config, build net, data, task and callbacks, load the resume state's reference. Nothing runs.
    `names`: the run's names where Hydra's current job is not this run's (a packed job, an ensemble member)."""
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")
    run_dir = Path(run_dir)
    validate_config(cfg)  # values and types, before anything is built or computed
    if "paths" in cfg and "output_dir" in cfg.paths:  # the run's folder, recorded where LHT users look for it
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
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
        "task=%s image=%s output %s, net %s with %.2fM parameters, regularizer=%s, seed %d",
        task.name,
        data.name,
        "x".join(map(str, task.out_avg.shape[-2:])),
        type(net).__name__,
        sum(p.numel() for p in net.parameters()) / 1e6,
        task.regularizer.name,
        int(cfg.seed),
    )

    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None:
            callbacks.append(configured(build(node), name))  # its name files its checkpoint state
    best = next((c for c in callbacks if isinstance(c, BestIterate)), None)
    if best is None:  # the best iterate is always captured
        best = BestIterate().named("best_iterate")
        callbacks.append(best)
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
        (names or run_names(cfg)).of(task.name, data.name),
        metrics=metrics,
    )


def build_run(cfg: DictConfig, speed=None):
    """net, data module, task and the loaded data. `net.output_channels: null` follows the image's channels: the net
    is built again for a gray image (same seed, so the same weights as one built for 1 channel directly). `speed`:
    the config's SpeedOptions, read from it where not given."""
    import torch

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


# overrides that say how or on what a job ran, not its setting: left out of its run name
NOT_SETTINGS = (
    "data.image",
    "data.observed",
    "data.root",
    "data.mask",
    "data.flash",
    "data.no_flash",
    "paths",
    "hydra",
    "launcher",
    "logger",
    "tags",
    "cpu_threads",
    "chunk",
    "checkpoint_every",
    "resume",
    "trainer",
    "gpu_lease",
    "callbacks.progress",
)
NOT_TAGGED = ("paths", "logger", "launcher", "hydra", "trainer")  # group choices that say how a run ran


@dataclass(frozen=True)
class RunNames:
    """How a run is named in its loggers: `<task>/<image>/<settings>` (denoising/chelsea/lr=0.01,seed=1), W&B's
    group the sweep's folder, and the config groups chosen (net: skip_small). What comes from Hydra is read while
    the job is Hydra's current one (`run_names`: a packed job's at launch); the task and image when prepared."""

    settings: str = ""  # the job's overrides that make its setting, short keys (lr=0.01,seed=1)
    group: str | None = None  # the sweep's folder name in a multirun
    choices: dict = field(default_factory=dict)  # config group -> choice (net: skip_small)
    task: str = ""
    image: str = ""

    @property
    def name(self) -> str:
        return "/".join(p for p in (self.task, self.image, self.settings) if p) or "run"

    @property
    def tags(self) -> list[str]:
        return [f"{g}={c}" for g, c in self.choices.items() if g.split("/")[0] not in NOT_TAGGED]

    def of(self, task: str, image: str) -> "RunNames":
        return dataclasses.replace(self, task=task, image=image)

    def with_setting(self, key: str, value) -> "RunNames":
        """These names with `key=value` in the settings (an ensemble member's seed), replacing the key's value."""
        kept = [s for s in self.settings.split(",") if s and s.partition("=")[0] != key]
        return dataclasses.replace(self, settings=",".join([*kept, f"{key}={value}"]))


def short_value(value: str) -> str:
    """An override's value as a name shows it: 3 significant digits for a float, a path's file stem."""
    text = value.strip("'\"")
    try:
        number = float(text)
    except ValueError:
        return Path(text).stem if "/" in text else text
    return text if number.is_integer() and "." not in text and "e" not in text.lower() else f"{number:.3g}"


def settings_of(overrides: list[str]) -> str:
    """The overrides that make a job's setting as `lr=0.01,seed=1`: keys shortened to their last part where that
    stays unique; how or on what the job ran (NOT_SETTINGS) left out."""
    pairs = []
    for item in overrides:
        key, eq, value = item.lstrip("+~").partition("=")
        if eq and not any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in NOT_SETTINGS):
            pairs.append((key, short_value(value)))
    lasts = [k.rsplit(".", 1)[-1] for k, _ in pairs]
    return ",".join(f"{last if lasts.count(last) == 1 else key}={v}" for (key, v), last in zip(pairs, lasts))


def run_names(cfg: DictConfig) -> RunNames:
    """The names of the job Hydra runs now: its settings (its overrides), its sweep's folder (a multirun) and its
    config group choices; empty outside Hydra (run() called from Python)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except ValueError:  # not under Hydra (tests call run() directly)
        return RunNames()
    choices = {g: str(c) for g, c in hc.runtime.choices.items() if c is not None and not g.startswith("hydra")}
    overrides = list(hc.overrides.task)
    if hc.mode != RunMode.MULTIRUN:
        return RunNames(settings_of(overrides), None, choices)
    given = sweep_arguments(Path(hc.sweep.dir))  # what every job of the sweep shares is not its name
    swept = [o for o in overrides if o not in given]
    return RunNames(settings_of(swept), Path(hc.sweep.dir).name, choices)


def sweep_arguments(sweep_dir: Path) -> list[str]:
    """The sweep's command-line overrides as Hydra recorded them (multirun.yaml), as text (`${stem}` in one is not
    resolved): a job's override that is one of them verbatim is the same for every job (seed=0,1 is not; an Optuna
    trial's values are not there at all)."""
    import yaml

    try:
        recorded = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())
        overrides = recorded["hydra"]["overrides"]["task"]
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
        return []
    return [str(o) for o in overrides or []]
