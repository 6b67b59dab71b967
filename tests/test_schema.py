"""Typed config values (config/schema.py): every node with a `_target_` is held to its target's signature before
anything is built, so a boolean given as a string, a number given as text, a float for a whole number, a list of the
wrong items or a key the constructor does not take is one paragraph naming the key, the value and the type; every
shipped config passes; a user's own annotated class is checked the same way, with no edit of the package."""

from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Sequence

import pytest
import torch
from conftest import compose_cfg, dip_cli
from omegaconf import OmegaConf, open_dict

from dip_lightning.config.schema import Channels, Ge, Len, PositiveInt, conforms, describe, schema_of
from dip_lightning.config.validate import validate_config
from dip_lightning.errors import DIPError
from dip_lightning.nets.base import Generator

# every case is refused before a net is built: the default net's size does not matter
FAST = ["data.crop=64", "logger=none", "callbacks=none", "chunk=50", "cpu_threads=1", "iterations=3"]
CONF = Path(__file__).resolve().parents[1] / "conf"


# ------------------------------------------------------------------------------------------- wrong values, by group
@pytest.mark.parametrize(
    "overrides, message",
    [
        # booleans given as strings: each acted as true before
        (
            ["net.need_sigmoid=no"],
            r"net\.need_sigmoid='no' is not valid; expected true or false \(a boolean\) for "
            r"Skip's need_sigmoid: 'no' is a string, not a boolean; write net\.need_sigmoid=false\.",
        ),
        (["net.need_sigmoid=maybe"], r"net\.need_sigmoid='maybe' is not valid; expected true or false .*Skip's"),
        (["task.clip=off"], r"task\.clip='off' is not valid; expected true or false .*Denoising's clip.*clip=false"),
        (["task.backtracking=no"], r"task\.backtracking='no' is not valid; expected true or false .*Denoising's "),
        (["regularizer=tv", "regularizer.isotropic=on"], r"regularizer\.isotropic='on' .*TV's isotropic.*=true"),
        (
            ["+callbacks.rule._target_=dip_lightning.callbacks.early_stopping.ESWMV", "+callbacks.rule.stop=no"],
            r"callbacks\.rule\.stop='no' is not valid; expected true or false .*ESWMV's stop",
        ),
        (["+optimizer.amsgrad=yes"], r"optimizer\.amsgrad='yes' is not valid; expected true or false .*Adam's"),
        (["trainer.benchmark=off"], r"trainer\.benchmark='off' is not valid; expected true or false .*or null"),
        # a whole number given as a string, a float for a whole number
        (
            ["net.input_depth='32'"],
            r"net\.input_depth='32' is not valid; expected a whole number >= 1 for Skip's "
            r"input_depth: '32' is a string, not a number\.",
        ),
        (["task.log_every=ten"], r"task\.log_every='ten' is not valid; expected a whole number >= 1 .*Denoising's"),
        (
            ["task.backtrack_check_every=2.0"],
            r"backtrack_check_every=2\.0 is not valid; expected a whole number "
            r"for Denoising's backtrack_check_every; a float is not taken for a whole number\.",
        ),
        (
            [
                "+callbacks.snap._target_=dip_lightning.callbacks.ImageSnapshots",
                "+callbacks.snap.every_n_iterations=2.5",
            ],
            r"callbacks\.snap\.every_n_iterations=2\.5 is not valid; expected a whole number for ImageSnapshots's",
        ),
        # a number where text is expected; text where a number is expected
        (
            ["data.root=2024", "data.image=x.png"],
            r"data\.root=2024 is not valid; expected a string or null for "
            r"SingleImageDataModule's root; a name that Hydra reads as a number is quoted: \"data\.root='2024'\"",
        ),
        (["task.sigma=high"], r"task\.sigma='high' is not valid; expected a number for Denoising's sigma"),
        # lists of the wrong items or length, a mapping of the wrong keys
        (
            ["net.num_channels_down=[16,16,x]"],
            r"num_channels_down=\[16, 16, 'x'\] is not valid; expected a non-"
            r"empty list of whole numbers >= 1 for Skip's num_channels_down",
        ),
        (["net=unet", "net.num_channels=[8,0]"], r"net\.num_channels=\[8, 0\] .*whole numbers >= 1 for UNet's"),
        (
            ["+optimizer.betas=[0.9]"],
            r"optimizer\.betas=\[0\.9\] is not valid; expected a list of 2 values "
            r"\[a number, a number\] for Adam's betas",
        ),
        (["task.reg_noise_schedule={a:1}"], r"reg_noise_schedule=\{'a': 1\} .*a mapping of whole numbers to numbers"),
        # a key the constructor does not take
        (
            ["+net.need_sigmod=true"],
            r"net\.need_sigmod=True: need_sigmod is not a setting of Skip "
            r"\(dip_lightning\.nets\.skip\.Skip\).*did you mean need_sigmoid\? "
            r"Skip takes input_depth, output_channels,",
        ),
        (["+task.noise_sigma=5"], r"task\.noise_sigma=5: noise_sigma is not a setting of Denoising .*backtracking"),
        (["+regularizer.weight=1"], r"regularizer\.weight=1: weight is not a setting of NoRegularizer .*no settings"),
        (["net=decoder", "+net.input_depth=3"], r"net\.input_depth=3: .*DeepDecoder takes output_channels, num_"),
        (["+trainer.max_step=5"], r"trainer\.max_step=5: .*did you mean max_steps\?"),
        # a value left missing
        (["net.input_depth=???"], r"net\.input_depth is \?\?\? \(a value that must be given\) .*whole number >= 1"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_paragraph_before_anything_is_built(run_dip, tmp_path, overrides, message):
    with pytest.raises(DIPError, match=message) as err:
        run_dip([*FAST, *overrides], run_dir=tmp_path / "r")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_the_command_line_prints_the_paragraph_without_a_traceback(tmp_path):
    proc = dip_cli([*FAST, "net.need_sigmoid=no", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "net.need_sigmoid='no' is not valid; expected true or false (a boolean) for Skip's need_sigmoid" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list(tmp_path.rglob("metrics.json"))


def test_net_output_channels_may_be_null_and_the_task_s_passed_objects_are_not_asked_for():
    cfg = compose_cfg([])
    assert cfg.net.output_channels is None
    validate_config(cfg)
    with pytest.raises(DIPError, match=r"net\.need_sigmod=.*Skip takes .*output_channels") as err:
        validate_config(compose_cfg(["+net.need_sigmod=1"]))
    assert "speed" not in str(err.value)
    with pytest.raises(DIPError, match=r"task\.clipp=.*Denoising takes ") as err:
        validate_config(compose_cfg(["+task.clipp=true"]))
    listed = str(err.value).split("Denoising takes ")[1].rstrip(".").split(", ")
    assert {"sigma", "clip", "backtracking", "noise_seed"} <= set(listed)
    assert not {"net", "optimizer", "speed"} & set(listed)  # what the run passes is no setting


# ---------------------------------------------------------------------------------------- no false refusal
def presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group, name", [(g, n) for g in ("net", "task", "regularizer", "callbacks", "experiment") for n in presets(g)]
)
def test_every_shipped_config_passes_the_schema(group, name):
    validate_config(compose_cfg([f"{group}={name}"]))


@pytest.mark.parametrize("name", presets("metric"))
def test_every_metric_preset_as_a_run_records_it_passes_the_schema(name):
    cfg = compose_cfg([f"metrics=[psnr,{name}]"])
    with open_dict(cfg):
        cfg.metric[name] = OmegaConf.load(CONF / "metric" / f"{name}.yaml")  # as config.yaml holds it
    validate_config(cfg)


@pytest.mark.parametrize("net", presets("net"))
@pytest.mark.parametrize("task", presets("task"))
def test_every_net_with_every_task_passes_the_schema(net, task):
    validate_config(compose_cfg([f"net={net}", f"task={task}"]))


def test_the_values_the_presets_state_in_other_forms_pass():
    validate_config(
        compose_cfg(
            [
                "data.crop=[64,96]",
                "task.reg_noise_schedule={100:0.5}",
                "net.filter_size_down=[3,5,3,5,3]",
                "net.upsample_mode=[nearest,bilinear,bilinear,bilinear,bilinear]",
                "+optimizer.betas=[0.9,0.99]",
                "trainer.devices=1",
                "trainer.deterministic=warn",
                "data.mask=random",
                "data.mask_ratio=0.5",
                "task.noise_seed=null",
            ]
        )
    )


# ----------------------------------------------------------------------------------------- a user's own class
class TinyNet(Generator):
    """A user's net, annotated as the package's are; the package is not edited to check it."""

    def __init__(
        self,
        input_depth: PositiveInt = 8,
        output_channels: PositiveInt = 3,
        width: PositiveInt = 8,
        smooth: bool = False,
        kernel: Literal[1, 3] = 3,
    ):
        super().__init__()
        self.input_depth, self.output_channels = input_depth, output_channels
        self.conv = torch.nn.Conv2d(input_depth, output_channels, kernel, padding=kernel // 2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(z))


def with_tiny_net(overrides: list[str], **net: Any):
    cfg = compose_cfg(overrides)
    with open_dict(cfg):
        cfg.net = {"_target_": f"{__name__}.TinyNet", "input_depth": 8, "output_channels": None, **net}
    return cfg


@pytest.mark.parametrize(
    "net, message",
    [
        ({"smooth": "no"}, r"net\.smooth='no' is not valid; expected true or false \(a boolean\) for TinyNet's smooth"),
        ({"width": 2.5}, r"net\.width=2\.5 is not valid; expected a whole number >= 1 for TinyNet's width"),
        ({"width": 0}, r"net\.width=0 is not valid; expected a whole number >= 1 for TinyNet's width"),
        ({"kernel": 5}, r"net\.kernel=5 is not valid; expected one of 1, 3 for TinyNet's kernel"),
        ({"widht": 8}, r"net\.widht=8: widht is not a setting of TinyNet .*did you mean width\?"),
    ],
)
def test_a_user_s_own_annotated_net_is_checked_the_same_way(tmp_path, net, message):
    from dip_lightning.run.job import run

    with pytest.raises(DIPError, match=message):
        run(with_tiny_net(FAST, **net), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_user_s_own_annotated_net_runs_when_its_values_fit(tmp_path):
    from dip_lightning.run.job import run

    run(with_tiny_net(FAST, width=4, smooth=True, kernel=1), tmp_path / "r")
    assert (tmp_path / "r" / "metrics.json").is_file()


# --------------------------------------------------------------------------------------- what an annotation takes
@pytest.mark.parametrize(
    "value, tp, ok",
    [
        (True, bool, True),
        ("no", bool, False),
        (0, bool, False),
        (3, int, True),
        (True, int, False),
        (3.0, int, False),
        (3, float, True),
        (2**70, Annotated[int, Ge(0)], True),
        (float("nan"), Annotated[float, Ge(0)], False),
        ("a", str, True),
        (2024, str, False),
        (None, int | None, True),
        ("auto", int | Literal["auto"], True),
        ("fast", int | Literal["auto"], False),
        ([1, 2], Sequence[int], True),
        ("12", Sequence[int], False),
        ([1, "x"], list[int], False),
        ([], Channels, False),
        ([0.9, 0.999], tuple[float, float], True),
        ([0.9], tuple[float, float], False),
        ([1, 2, 3], tuple[int, ...], True),
        ({1: 0.5}, dict[int, float], True),
        ({"a": 0.5}, dict[int, float], False),
        ("anything", Callable[..., Any], True),
        ({"x": 1}, Any, True),
        ([64, 96], Annotated[list[PositiveInt], Len(2, 2)], True),
        ([64], Annotated[list[PositiveInt], Len(2, 2)], False),
        ("out/dir", Path, True),
    ],
)
def test_what_each_annotation_takes(value, tp, ok):
    assert conforms(value, tp) is ok


def test_what_each_annotation_says():
    assert describe(Channels) == "a non-empty list of whole numbers >= 1"
    assert describe(int | Sequence[int]) == "a whole number or a list of whole numbers"
    assert describe(bool | None) == "true or false (a boolean) or null"
    assert describe(Literal["clean", "reference"]) == "one of 'clean', 'reference'"
    assert describe(float | torch.Tensor) == "a number"  # a Tensor is no config value: not offered


def test_the_schema_follows_kwargs_passed_on_to_the_base_class_and_takes_any_key_of_other_kwargs():
    denoising = schema_of("dip_lightning.tasks.denoising.Denoising")
    assert denoising.rest is None and {"sigma", "clip", "backtracking", "noise_seed", "regularizer"} <= set(
        denoising.params
    )
    maximization = schema_of("dip_lightning.tasks.features.ActivationMaximization")
    assert {"unit", "cnn", "target_size", "log_every"} <= set(
        maximization.params
    )  # its own, FeatureInversion's, DIPTask's
    data = schema_of("dip_lightning.data.datamodule.SingleImageDataModule")
    assert data.rest is not None and conforms("random", data.rest) and conforms(0.5, data.rest)
    assert schema_of("no_such_module.Net") is None  # left to the build, which names it
