"""dip-run as a command: what Hydra loads to compose stays light (help, --cfg and tab completion answer at once),
the presets find their images from any directory, and a run prints its own lines, not Lightning's banners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, compose_cfg, dip_cli
from hydra import initialize_config_dir

from dip_lightning.config.compose import CONFIG_DIR
from dip_lightning.errors import DIPError

HEAVY = ("torch", "pytorch_lightning", "lightning", "lightning_fabric", "torchmetrics", "wandb", "matplotlib")


def test_what_hydra_loads_to_compose_imports_no_heavy_package():
    """Hydra imports the hydra_plugins modules (and what they import) and dip_lightning.train for every --help,
    --cfg and TAB of tab completion: torch and Lightning there cost seconds each time."""
    code = (
        "import sys\n"
        "import hydra_plugins.dip_sweepers.dip_sweepers, hydra_plugins.dip_sweepers.packed_launcher\n"
        "import dip_lightning, dip_lightning.train, dip_lightning.config.resolvers, dip_lightning.sweeps.images\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def run_command(tmp_path, module: str, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """`module` run as its command runs it (`python -m`, from `tmp_path`) with `args`; its stderr ends with
    `HEAVY [...]`: which of the HEAVY packages it imported."""
    code = (
        "import sys, runpy\n"
        f"sys.argv = [{module!r}, *{args!r}]\n"
        "try:\n"
        f"    runpy.run_module({module!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job", "experiment=denoise_f16"], ["-sc", "query=bash"]])
def test_help_cfg_and_completion_import_no_heavy_package(tmp_path, args):
    """The whole of what dip-run loads for them, Hydra's plugin discovery included (it execs every module of the
    hydra_plugins namespace, installed plugins too)."""
    out = run_command(tmp_path, "dip_lightning.train", args, {"COMP_LINE": "dip-run net=", "COMP_POINT": "12"})
    assert "HEAVY []" in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize(
    "given, rule",
    [
        (["data.observed=x.png"], "discrepancy"),  # no ground truth: denoising's rule (conf/task/denoising.yaml)
        (["data.observed=x.png", "data.image=astronaut"], "null"),  # a ground truth chooses
        (["data.observed=x.png", "callbacks=es_wmv"], "null"),  # the run's own rule chooses
        (["data.observed=x.png", "task=super_resolution"], "null"),  # no rule measured better for SR
        (["data.observed=x.png", "without_ground_truth=es_emv"], "es_emv"),
    ],
)
def test_the_gt_free_rule_resolves_without_a_heavy_package(tmp_path, given, rule):
    """`dip-run --cfg job --resolve` shows the rule a run without ground truth gets (gt_free_rule, resolved from the
    task's config file and the callbacks' classes read from the package's source), importing no task or callback
    class: torch and Lightning cost seconds. (x.png need not exist: nothing is read.)"""
    out = run_command(tmp_path, "dip_lightning.train", ["--cfg", "job", "--resolve", *given])
    assert "HEAVY []" in out.stderr, out.stderr[-2000:]
    assert f"\ngt_free_rule: {rule}\n" in out.stdout, out.stdout[-2000:]


@pytest.mark.parametrize("args", [["--help"], ["--no-such-option"], []])
def test_dip_gather_help_and_a_wrong_argument_import_no_heavy_package(tmp_path, args):
    """dip-gather answers from argparse: the plots (matplotlib) and image files (torch, via Lightning's data module)
    are imported where a sweep is gathered."""
    out = run_command(tmp_path, "dip_lightning.sweeps.gather", args)
    assert "HEAVY []" in out.stderr, out.stderr[-2000:]
    assert "usage: dip-gather" in (out.stdout if args == ["--help"] else out.stderr)
    assert "error:" not in out.stderr if args == ["--help"] else "error:" in out.stderr


def test_the_package_s_stopping_rules_are_told_from_its_source_as_from_its_classes():
    """gt_free_rule reads whether a callbacks entry of the package is a stopping rule from the package's source
    (config/targets.py, rule_in_source), so resolving a config imports no callback module: it must say what the classes
    say, for every class of dip_lightning.callbacks, the names its package exports and every conf/callbacks target."""
    import importlib
    import inspect
    import pkgutil

    import yaml

    import dip_lightning.callbacks as package
    from dip_lightning.callbacks.roles import StoppingRule, target_is_stopping_rule
    from dip_lightning.config.targets import rule_in_source

    targets = {f"{package.__name__}.{name}" for name in package.__all__}
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name)
        targets |= {
            f"{info.name}.{n}" for n, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == info.name
        }

    def conf_targets(node):
        if isinstance(node, dict):
            yield from ([node["_target_"]] if "_target_" in node else [])
            for value in node.values():
                yield from conf_targets(value)

    for file in (REPO / "conf" / "callbacks").glob("*.yaml"):
        targets |= set(conf_targets(yaml.safe_load(file.read_text()) or {}))
    rules = {t for t in targets if target_is_stopping_rule(t)}
    assert {"dip_lightning.callbacks.discrepancy.Discrepancy", "dip_lightning.callbacks.BestIterate"} <= targets
    assert {"dip_lightning.callbacks.early_stopping.ESWMV", f"{StoppingRule.__module__}.StoppingRule"} <= rules
    for target in sorted(targets):
        assert rule_in_source(target) is (target in rules), target
    assert rule_in_source("pytorch_lightning.callbacks.LearningRateMonitor") is None  # not the package's: imported


def test_a_preset_finds_the_data_root_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("DIP_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(["experiment=denoise_f16"])
    root = Path(cfg.data.root)
    assert root.is_absolute() and root == Path(os.path.normpath(REPO / ".." / "shared" / "data" / "dip-repo"))
    assert cfg.paths.data_root == str(root)


def test_given_data_roots_keep_their_meaning(tmp_path, monkeypatch):
    """An absolute DIP_DATA_ROOT or paths.data_root is taken as is; a relative one starts at the current directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIP_DATA_ROOT", "/data/dip")
    assert compose_cfg(["experiment=denoise_f16"]).data.root == "/data/dip"
    assert compose_cfg(["experiment=denoise_f16", "paths.data_root=mine"]).data.root == "mine"


def test_without_a_checkout_the_data_root_starts_at_the_current_directory(tmp_path, monkeypatch):
    """A wheel install has no project folder next to the package: the default is read from where dip-run runs."""
    from dip_lightning.config import resolvers as project

    monkeypatch.delenv("DIP_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(project, "project_root", lambda: None)
    expected = os.path.normpath(tmp_path / ".." / "shared" / "data" / "dip-repo")
    assert compose_cfg(["experiment=denoise_f16"]).data.root == expected


def test_a_missing_preset_image_says_what_to_set_and_where_the_images_come_from(run_dip, tmp_path):
    with pytest.raises(DIPError) as err:
        run_dip(["experiment=inpaint_kate", f"paths.data_root={tmp_path}", "iterations=1", "logger=none"])
    message = str(err.value)
    assert "inpainting/kate.png" in message and "does not exist" in message
    for setting in ("paths.data_root", "DIP_DATA_ROOT", "data.root", "github.com/DmitryUlyanov/deep-image-prior"):
        assert setting in message, setting


def test_help_has_no_internal_group():
    out = dip_cli(["--help"], cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "task_defaults" not in out.stdout
    for group in ("task:", "net:", "experiment:", "logger:"):
        assert group in out.stdout, group


BANNERS = (
    "GPU available",
    "TPU available",
    "litlogger",
    "Trainer.fit` stopped",
    "configure_optimizers",
    "anonymous setting",
)


def test_a_run_prints_no_lightning_or_wandb_banner(tmp_path):
    out = dip_cli([*TINY, "logger=wandb", "iterations=20", "chunk=10"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "outputs in" in text  # the run's own summary line is still there
    for banner in BANNERS:
        assert banner not in text, banner


def test_the_help_list_of_groups_is_hydras_without_the_internal_ones():
    """What --help lists (conf/ read directly) is Hydra's own $APP_CONFIG_GROUPS less the internal groups."""
    from hydra.core.global_hydra import GlobalHydra

    from dip_lightning.config import resolvers as project

    out = dip_cli(["--help"], cwd=REPO, timeout=60)
    listed = out.stdout.split("(group=option)\n\n", 1)[1].split("\n\n", 1)[0] + "\n"
    assert listed == project.config_groups()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        hydras = GlobalHydra.instance().hydra.format_config_groups(
            lambda g: not g.startswith("hydra") and g.split("/")[0] not in project.INTERNAL_GROUPS
        )
    assert listed == hydras


def test_make_help_aligns_its_descriptions():
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) > 5 and all(line.startswith("  make ") for line in lines)
    columns = set()
    for line in lines:
        name = line[7:].split()[0]
        rest = line[7 + len(name) :]
        assert rest.startswith("  "), line  # at least two spaces after the longest target
        columns.add(7 + len(name) + len(rest) - len(rest.lstrip()))
    assert len(columns) == 1, out.stdout


def _install_torch(monkeypatch, tmp_path, *, before, after, gpu=False, offered=("2.13.0+cpu",), fails=(), mode="auto"):
    """Run .ci/install_torch.py's main() with pip, the installed torch and the GPU faked; returns pip's calls."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("install_torch", REPO / ".ci" / "install_torch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls, installed = [], iter([before, after])
    monkeypatch.setattr(module, "installed_torch", lambda: next(installed))
    monkeypatch.setattr(module, "has_gpu", lambda: gpu)
    monkeypatch.setattr(
        module, "would_install", lambda *a: [] if "--no-index" in a and before is not None else list(offered)
    )

    def pip(*args, check=True):
        calls.append(args)
        return 1 if any(f in args for f in fails) else 0

    monkeypatch.setattr(module, "pip", pip)
    monkeypatch.setattr(sys, "argv", ["install_torch.py", mode, str(tmp_path / "pin.txt")])
    module.main()
    return calls, (tmp_path / "pin.txt").read_text(), module


def test_make_install_keeps_an_installed_cuda_torch(monkeypatch, tmp_path):
    cuda = ("2.11.0+cu126", "12.6")
    calls, pin, _ = _install_torch(monkeypatch, tmp_path, before=cuda, after=cuda, gpu=True)
    assert calls == [] and pin == "torch==2.11.0+cu126\n"  # the package is then installed with this pin


def test_make_install_takes_the_cpu_build_without_a_gpu(monkeypatch, tmp_path):
    cpu = ("2.13.0+cpu", None)
    calls, pin, m = _install_torch(monkeypatch, tmp_path, before=None, after=cpu)  # a CPU build where pip looks
    assert calls == [("install", "-q", "-c", str(m.CONSTRAINTS), "torch")] and pin == "torch==2.13.0+cpu\n"

    calls, pin, m = _install_torch(monkeypatch, tmp_path, before=None, after=cpu, offered=("2.13.0",))  # PyPI's only
    if sys.platform.startswith("linux"):  # PyPI's Linux build is the CUDA one: the PyTorch CPU index instead
        assert len(calls) == 1 and m.CPU_INDEX in calls[0] and "--index-url" in calls[0]

    unreachable = (m.CPU_INDEX,)
    calls, _, m = _install_torch(monkeypatch, tmp_path, before=None, after=cpu, offered=("2.13.0",), fails=unreachable)
    if sys.platform.startswith("linux"):  # the CPU index unreachable: the default index's build, with a warning
        assert len(calls) == 2 and calls[1] == ("install", "-q", "-c", str(m.CONSTRAINTS), "torch")


def test_make_install_takes_the_cuda_build_with_a_gpu(monkeypatch, tmp_path):
    calls, pin, m = _install_torch(monkeypatch, tmp_path, before=None, after=("2.13.0", "12.8"), gpu=True)
    assert calls == [("install", "-q", f"torch{m.torch_range()}")] and pin == "torch==2.13.0\n"
    assert m.torch_range().startswith(">=")
