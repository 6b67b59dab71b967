"""The conf folder (named here once), building objects from the config (`build`), and the presets a run builds by
name at run time, composed as Hydra composes the app's config: a callbacks preset's stopping rule
(`without_ground_truth=<name>`: run/gt_free.py) and a metric (`metrics=[psnr,<name>]`). The app's config search path
is used, so a --config-dir or hydra.searchpath folder of the user's can add one; the package's conf/ always. A run
records what it built in its config (config.yaml), so a run from that file needs no preset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import DIPError

CONF = Path(__file__).resolve().parents[3] / "conf"  # src/dip_lightning/config/ -> the checkout's conf/
CONFIG_DIR = str(CONF)  # as Hydra's config_path takes it


def literal(cfg: DictConfig) -> DictConfig:
    """`cfg` resolved, with every `${` of its text values escaped: a value that holds `${...}` as text (a file named
    'd/${oc.env:HOME}.png') stays that text when the result is resolved again, as hydra.utils.instantiate and a
    config.yaml read back do."""

    def escape(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("${", "\\${")
        if isinstance(value, dict):
            return {k: escape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [escape(v) for v in value]
        return value

    return OmegaConf.create(escape(OmegaConf.to_container(cfg, resolve=True)))


def to_yaml(cfg: DictConfig) -> str:
    """`cfg` as config.yaml records it: resolved, its text values kept as text (`literal`)."""
    return OmegaConf.to_yaml(literal(cfg))


def build(cfg: DictConfig, **objects: Any) -> Any:
    """hydra.utils.instantiate of `cfg`, called with `objects` (what is built already: a net, an optimizer, the
    speed options) as they are: instantiate's own keyword arguments would turn a dataclass into a config. A text
    value holding `${` (a file named 'd/${oc.env:HOME}.png') is one of those objects: instantiate would resolve it
    as an interpolation. A DIPError raised by a constructor comes out as itself, any other failure as one naming the
    target."""
    import hydra
    from hydra.errors import InstantiationException

    if OmegaConf.is_config(cfg):  # a text value that holds `${` (a file's name) is passed as it is, not resolved
        plain = OmegaConf.to_container(cfg, resolve=True)
        texts = {k: v for k, v in plain.items() if isinstance(v, str) and "${" in v and not k.startswith("_")}
        if texts:
            cfg, objects = (
                literal(OmegaConf.create({k: v for k, v in plain.items() if k not in texts})),
                {
                    **texts,
                    **objects,
                },
            )
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


def with_hydra(compose_with):
    """`compose_with(compose)` under Hydra: the running app's config search path, else (run() called from Python)
    conf/ alone."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose_with(compose)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose_with(compose)


def app_searchpath() -> list[str]:
    """The running app's hydra.searchpath (its primary config's and the command line's); [] outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return [str(p) for p in HydraConfig.get().searchpath or []]
    except ValueError:
        return []


def preset_node(group: str, name: str, key: str | None = None) -> DictConfig | None:
    """The node `key` of the preset <group>/<name> (the whole preset with key None), as Hydra composes it (its
    defaults list applied); None when no such preset (or no such key in it) exists. A preset in a hydra.searchpath
    folder is found by composing the app's primary config with it; one of the package's conf/ always (a run from a
    run folder's config.yaml, whose search path is that folder)."""
    from hydra.errors import HydraException

    inner = f"{group}.{key}" if key else group

    def composed(compose) -> DictConfig | None:
        try:
            cfg = compose(config_name=f"{group}/{name}")
        except HydraException:
            cfg = None
        searchpath = app_searchpath()
        if cfg is None and searchpath:
            from hydra.core.hydra_config import HydraConfig

            listed = ",".join("'" + p.replace("\\", "\\\\").replace("'", "\\'") + "'" for p in searchpath)
            chosen = f"{group}={name}" if group in HydraConfig.get().runtime.choices else f"+{group}={name}"
            try:
                cfg = compose(
                    config_name=HydraConfig.get().job.config_name,
                    overrides=[chosen, f"hydra.searchpath=[{listed}]"],
                )
            except HydraException:
                cfg = None
        if cfg is None:
            return None
        found = OmegaConf.select(cfg, inner, default=None)
        return found if found is not None else (cfg.get(key) if key else cfg)

    node = with_hydra(composed)
    path = CONF / group / f"{name}.yaml"
    if node is None and path.is_file():
        loaded = OmegaConf.load(path)
        node = loaded.get(key) if key else loaded
    return node


def recorded(cfg: DictConfig, where: str, name: str, node: DictConfig) -> DictConfig:
    """`node` recorded in `cfg` as <where>.<name> (config.yaml holds it), which is returned."""
    with open_dict(cfg):
        if cfg.get(where) is None:
            cfg[where] = {}
        cfg[where][name] = node
    return cfg[where][name]


def metric_node(cfg: DictConfig, name: str) -> DictConfig:
    """The config of the metric `name` of `metrics: [...]`: cfg.metric.<name> where the config holds it (a run
    folder's config.yaml; `+metric.<name>._target_=...` on the command line), else the preset metric/<name>.yaml,
    recorded there."""
    given = cfg.get("metric") or {}
    if name in given:
        return given[name]
    node = preset_node("metric", name)
    if node is None:
        raise DIPError(
            f"metrics={list(cfg.metrics)} names {name!r}, which is no metric: expected psnr and names of "
            f"conf/metric/<name>.yaml ({', '.join(sorted(p.stem for p in (CONF / 'metric').glob('*.yaml')))}), a "
            "metric/<name>.yaml in a --config-dir or hydra.searchpath folder of yours, or one given inline as "
            f"+metric.{name}._target_=<your Metric class>."
        )
    return recorded(cfg, "metric", name, node)


def configured_metrics(cfg: DictConfig) -> dict:
    """name -> Metric for every name of `metrics` beyond psnr (which the task always scores), built from
    `metric_node`; a config that builds no dip_lightning.metrics.Metric is refused, naming it."""
    from ..metrics import Metric

    built = {}
    for name in [str(n) for n in cfg.get("metrics") or ["psnr"] if n != "psnr"]:
        node = metric_node(cfg, name)
        metric = build(node)
        if not isinstance(metric, Metric):
            raise DIPError(
                f"metric.{name} (_target_: {node.get('_target_')}) builds an instance of "
                f"{type(metric).__qualname__}, not a dip_lightning.metrics.Metric: a metric subclasses Metric and "
                "scores (result, ground truth) in __call__ (dip_lightning/metrics.py)."
            )
        built[name] = metric
    return built
