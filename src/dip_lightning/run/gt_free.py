"""The GT-free stopping rule a run gets, as a value of its config: `gt_free_rule` in conf/train.yaml.

A run given only an observation (data.observed, no data.image) has no ground truth to pick its best iterate with,
so a stopping rule (a conf/callbacks preset) chooses restored.png. `without_ground_truth` is the user's choice of
it: a preset's name, null for none, or `auto` for the rule measured best for the task. That rule is data of the
task's config: conf/train.yaml reads the choice out with `gt_free_rule: ${dip.gt_free_rule:}` (no task rule), and a
task file with a measured rule states it as the resolver's argument, `gt_free_rule: ${dip.gt_free_rule:discrepancy}`
at the top level of the config (conf/task/denoising.yaml, `# @package _global_`; the argument may be any
interpolation, of the net's config for instance). So `dip-run --cfg job --resolve` shows the rule a run would get
before it runs, without importing the task's class (torch, Lightning), and the run adds that very preset
(`default_rule`, below). It resolves to null where no rule is added: the run has a ground truth (data.image), or its
callbacks already hold a stopping rule (a callbacks entry whose class is a StoppingRule: the package's or a user's
own), or `auto` finds no rule for the task.
"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig, OmegaConf, open_dict

from ..config.compose import CONF, preset_node, recorded, with_hydra
from ..config.resolvers import register_resolvers
from ..config.targets import rule_in_source

log = logging.getLogger(__name__)

RESOLVER = "dip.gt_free_rule"


def has_stopping_rule(callbacks) -> bool:
    """Whether the composed `callbacks` node already holds a stopping rule."""
    return any(
        isinstance(node, DictConfig) and is_stopping_rule(node.get("_target_"))
        for name, node in (callbacks or {}).items()
        if name != "without_ground_truth"  # the rule a run adds itself (its recorded config.yaml holds it)
    )


def is_stopping_rule(target) -> bool:
    """Whether a callback's `_target_` names a StoppingRule class. A class already loaded answers itself; one of this
    package's is read from its source (`rule_in_source`), so that resolving a config imports no callback module (they
    import torch and Lightning); any other is imported (callbacks.roles.target_is_stopping_rule)."""
    verdict = None
    if isinstance(target, str) and target.rpartition(".")[0] not in sys.modules:
        verdict = rule_in_source(target)  # None for a class of another package
    if verdict is None:
        from ..callbacks.roles import target_is_stopping_rule

        verdict = target_is_stopping_rule(target)
    return verdict is True


def without_ground_truth(cfg) -> bool:
    """Whether the config's run fits an observation with no ground truth beside it (data.observed, no data.image):
    the runs a GT-free rule and ensemble=auto's GT-free number are for. A config without an observation (a
    generative task, or one that simulates its observation from data.image) has a ground truth or nothing to fit."""
    data = cfg.get("data") or {}
    return data.get("image") is None and data.get("observed") is not None


def gt_free_rule(task_rule: str | None = None, *, _root_) -> str | None:
    """The rule preset a run of the config `_root_` gets to choose its result without ground truth, or None.
    `task_rule`: the rule measured best for the task, `without_ground_truth=auto`'s (the resolver's argument in the
    task's config file; none in conf/train.yaml's)."""
    if not without_ground_truth(_root_):
        return None  # a ground truth picks the best iterate; or there is no observation to fit (a generative task)
    name = _root_.get("without_ground_truth")
    if name == "auto":
        name = task_rule
    if not name or has_stopping_rule(_root_.get("callbacks")):
        return None
    return str(name)


# ------------------------------------------------------------------ the presets, composed as the app composes
def rule_preset(name: str) -> DictConfig | None:
    """The early_stopping node of the callbacks preset `name`, as Hydra composes callbacks/<name>.yaml (its defaults
    list applied; config_presets.preset_node); None when no such preset has one."""
    return preset_node("callbacks", name, "early_stopping")


def rule_presets() -> list[str]:
    """The callbacks presets that hold a stopping rule (early_stopping), in the app's config search path and conf/."""

    def options(compose) -> set[str]:
        from hydra.core.global_hydra import GlobalHydra

        return set(GlobalHydra.instance().config_loader().get_group_options("callbacks"))

    names = with_hydra(options) | {f.stem for f in (CONF / "callbacks").glob("*.yaml")}
    return sorted(n for n in names if rule_preset(n) is not None)


def default_rule(cfg: DictConfig, task, data, callbacks: list):
    """The GT-free stopping rule a run gets when it has an observation but no ground truth and its callbacks
    have no stopper: `without_ground_truth` names a callbacks preset, `auto` the one its task's config file states,
    null none; the config's `gt_free_rule` reads that choice out (`gt_free_rule`). The
    preset's rule is composed by Hydra from callbacks/<name>.yaml (the app's config search path, so a --config-dir
    or hydra.searchpath folder of the user's can add a rule; `rule_preset`) and recorded in `cfg` as
    callbacks.without_ground_truth, with its values: the run's config.yaml holds it, and a run from that
    config.yaml (`dip-run --config-path <run dir> --config-name config`) gets the same rule under the same name."""
    given_observation = data.clean is None and data.sources.get("observed") is not None
    from ..callbacks.roles import stopping_rules
    from ..config.compose import build
    from ..errors import DIPError

    if "gt_free_rule" in cfg:  # conf/train.yaml's read-out of without_ground_truth (above)
        name = cfg.gt_free_rule
    else:  # a config from before that key (an older run's config.yaml): it does not record the task's rule
        name = cfg.get("without_ground_truth")
        if name == "auto" and given_observation and not stopping_rules(callbacks):
            log.warning(
                "This config has no gt_free_rule (written before it existed): without_ground_truth=auto finds no "
                "task rule in it, so no stopping rule chooses the result; name one (without_ground_truth=discrepancy)."
            )
        if name == "auto":
            name = None
    if not name or not given_observation or stopping_rules(callbacks):
        return None
    node = rule_preset(str(name))
    if node is None:
        raise DIPError(
            f"without_ground_truth={name!r} is not a stopping rule; expected one of the callbacks presets "
            f"with an early_stopping rule ({', '.join(rule_presets())}) or null."
        )
    return build(recorded(cfg, "callbacks", "without_ground_truth", node))


def choose_ensemble(cfg: DictConfig) -> None:
    """ensemble=auto: the members a run gets, written into `cfg` before anything reads it (config.yaml records the
    number). A run without ground truth whose task states a GT-free ensemble (`gt_free_ensemble: {cpu: N, cuda: M}`
    in its task file, conf/task/denoising.yaml: the measured recipe within its time budget, docs/early-stopping.md)
    gets that many seeds on that device; any other run gets one."""
    if cfg.get("ensemble") != "auto":
        return
    members = cfg.get("gt_free_ensemble") or {}
    device = "cpu"
    if str(OmegaConf.select(cfg, "trainer.accelerator", default="auto")) != "cpu":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    n = int(members.get(device, 1)) if without_ground_truth(cfg) else 1
    with open_dict(cfg):
        cfg.ensemble = n
    if n > 1:
        log.info(
            "ensemble=auto: %d seeds (no ground truth, on %s; the task's GT-free recipe: each member stopped by its "
            "rule, restored.png their mean); ensemble=1 runs one seed",
            n,
            device,
        )


NO_REGULARIZER = "dip_lightning.regularizers.NoRegularizer"


def choose_regularizer(cfg: DictConfig, given: list[str] | None = None) -> None:
    """The task's GT-free variant for a run without ground truth whose regularizer is the default one (none),
    written into `cfg` before anything reads it (config.yaml records it). A task file states it as
    `gt_free_regularizer: {name, iterations, rule}` (conf/task/denoising.yaml: sure, measured best without ground
    truth; docs/early-stopping.md): the regularizer preset `name`, the net's input depth set to the observation's
    channels (the variants that take the image as input), `iterations` unless the command line set them (`given`:
    its overrides), and `rule` in place of without_ground_truth=auto (null: the variant's own result). A variant
    already chosen (regularizer=tv), `gt_free_regularizer=null`, a net without an input depth, an observation that
    cannot be read (the run reports why itself) or one the variant declines (sure: correlated noise) leave the config
    as it is: plain DIP and the task's rule."""
    variant = cfg.get("gt_free_regularizer")
    if not variant or not without_ground_truth(cfg):
        return
    if OmegaConf.select(cfg, "regularizer._target_") != NO_REGULARIZER or "input_depth" not in cfg.net:
        return
    name, iterations = variant.get("name"), variant.get("iterations")
    node = preset_node("regularizer", name) if isinstance(name, str) else None
    if node is None or isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        from ..errors import DIPError

        raise DIPError(
            f"gt_free_regularizer={OmegaConf.to_container(variant)!r} is not valid; expected null or {{name: a "
            "conf/regularizer option, iterations: a whole number of steps >= 1, rule: a callbacks preset or null}, "
            "e.g. {name: sure, iterations: 1500, rule: null}."
        )
    observed = read_observation(cfg.data)
    if observed is None:
        return
    import hydra

    reason = hydra.utils.get_class(node._target_).declines(observed)
    if reason:
        log.info("regularizer: none for this run without ground truth, not the task's %s: %s", name, reason)
        return
    given = command_line() if given is None else given
    with open_dict(cfg):
        cfg.regularizer = node
        cfg.net.input_depth = observed.shape[1]  # the variants that take the image as input: its channels
        if not any(o.lstrip("+~").startswith("iterations=") for o in given):
            cfg.iterations = iterations
        if cfg.get("without_ground_truth") == "auto":
            cfg.without_ground_truth = variant.get("rule")
    log.info(
        "regularizer: %s for a run without ground truth (the task's GT-free variant, %d iterations; "
        "gt_free_regularizer=null keeps plain DIP)",
        name,
        cfg.iterations,
    )


def command_line() -> list[str]:
    """The overrides dip-run was given for this job (Hydra's record), [] outside a dip-run process."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def read_observation(data):
    """data.observed's image (1, C, H, W), None when it cannot be read here (the run reports why itself)."""
    from ..data.datamodule import resolve_path
    from ..data.io import read_image
    from ..errors import DIPError

    path = resolve_path(str(data.observed), data.get("root"))
    crop = data.get("crop")
    crop = (crop, crop) if isinstance(crop, int) else tuple(crop) if crop else None  # what the run will restore
    try:
        return read_image(path, crop=crop, max_pixels=data.get("max_pixels"))
    except (DIPError, OSError, ValueError, TypeError):
        return None


register_resolvers({RESOLVER: gt_free_rule})  # on import: a run's config reads its gt_free_rule
