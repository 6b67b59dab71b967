"""The regularised DIP variants (conf/regularizer: none, tv, self_guided, aseqdip, sure) through the one mechanism every
task shares: each term, each input rule, their refusals, a run of every image task, and resume with a changing z."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, compose_cfg

from dip_lightning.checkpoint import Interrupted
from dip_lightning.errors import DIPError
from dip_lightning.regularizers import SURE, TV, total_variation
from dip_lightning.run.prepare import build_run

IMAGE_INPUT = ["net.input_depth=3", "task.backtracking=false"]
CLASSES = {"tv": "TV", "self_guided": "SelfGuided", "aseqdip": "ASeqDIP", "sure": "SURE"}


def prepared(overrides: list[str]):
    """The task as dip-run builds it, prepared and started, with its optimizer (no Trainer)."""
    _, _, task, data = build_run(compose_cfg([*TINY, *overrides]))
    task.prepare(data)
    task.start_on_device()
    return task, task.make_optimizer()


def test_total_variation_is_the_mean_of_the_differences():
    x = torch.zeros(1, 1, 4, 4)
    x[..., 2:] = 1.0  # one vertical edge: 4 of the 12 horizontal differences are 1, no vertical one
    assert float(total_variation(x)) == pytest.approx(4 / 12)
    assert float(total_variation(x, isotropic=True)) == pytest.approx(3 / 9, rel=1e-3)  # the 3x3 with both
    assert float(total_variation(torch.ones(1, 3, 8, 8))) == 0.0


def test_tv_adds_its_weighted_term_to_the_data_term():
    task, _ = prepared(["regularizer=tv", "regularizer.weight=0.5"])
    out = torch.rand_like(task.clean)
    loss, a_out = task.fit_loss(out)
    data_term, _ = task.operator.loss(out, task.observed)
    assert isinstance(task.regularizer, TV) and torch.equal(a_out, out)  # denoising: A = I
    assert float(loss) == pytest.approx(float(data_term + 0.5 * total_variation(out)))
    plain, _ = prepared(["regularizer=none"])
    assert float(plain.fit_loss(out)[0]) == pytest.approx(float(data_term))


def test_self_guided_trains_z_from_the_observation_in_its_own_parameter_group():
    task, opt = prepared(["regularizer=self_guided", "regularizer.lr_z=0.005", *IMAGE_INPUT])
    assert torch.equal(task.z, task.observed)  # z starts as the image the observation gives
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.005
    assert opt.param_groups[1]["params"][0] is task.z and task.z.requires_grad
    z0 = task.z.detach().clone()
    task.dip_iteration(opt)
    assert not torch.equal(task.z.detach(), z0)  # trained
    out = task.net(task.z).detach()
    loss, _ = task.fit_loss(out)
    data_term, _ = task.operator.loss(out, task.observed)
    expected = data_term + task.regularizer.weight * torch.nn.functional.mse_loss(out, task.z)
    assert float(loss) == pytest.approx(float(expected))


def test_self_guided_draws_its_own_input_noise_in_place_of_the_tasks_jitter():
    task, _ = prepared(["regularizer=self_guided", "task.reg_noise_std=0.03", *IMAGE_INPUT])
    assert task.reg_noise_std == 0.2 and "noise_std=0.2" in task.regularizer.describe()
    kept, _ = prepared(
        ["regularizer=self_guided", "regularizer.noise_std=null", "task.reg_noise_std=0.03", *IMAGE_INPUT]
    )
    assert kept.reg_noise_std == 0.03 and "noise_std=task.reg_noise_std" in kept.regularizer.describe()
    plain, _ = prepared(["regularizer=aseqdip", "task.reg_noise_std=0.03", *IMAGE_INPUT])
    assert plain.reg_noise_std == 0.03  # the other variants keep the task's jitter


def test_self_guided_at_its_defaults_denoises_by_a_margin(run_dip):
    # with the plain-DIP jitter as its eta (1/30, under the noise's 25/255) the net learns to pass the noisy z
    # through and the result ends near the input: the default eta must keep it well above
    m, _ = run_dip(
        [*TINY, "task=denoising", "task.sigma=25", "regularizer=self_guided", *IMAGE_INPUT, "iterations=300"]
    )
    assert m["psnr_final"] > m["psnr_observed"] + 3, m


def test_aseqdip_replaces_z_with_the_output_every_inner_steps():
    task, opt = prepared(["regularizer=aseqdip", "regularizer.inner_steps=2", *IMAGE_INPUT])
    z0 = task.z.clone()
    assert torch.equal(z0, task.observed)
    task.dip_iteration(opt)
    assert torch.equal(task.z, z0)  # not yet
    task.dip_iteration(opt)
    assert torch.equal(task.z, task.last_out)  # iteration 2's output
    assert task.input_changes and "z" in task.run_state()


def test_sure_adds_steins_divergence_term_from_a_probe_of_the_noisy_input():
    task, opt = prepared(["regularizer=sure", "regularizer.epsilon=0.5", "task.sigma=25", "net.input_depth=3"])
    sure = task.regularizer
    assert isinstance(sure, SURE) and torch.equal(task.z, task.observed)  # the net's input is the noisy image
    assert sure.sigma == pytest.approx(25 / 255)  # the simulated noise's level
    assert task.reg_noise_std == pytest.approx(25 / 255)  # the jitter: regularizer.jitter=1.0 x sigma
    task.draw_jitter()
    sure.before_iteration(task)
    x = task.net_input()
    out = task.net(x)
    loss, _ = task.fit_loss(out)
    eps = 0.5 * 25 / 255
    moved = task.net(x + eps * sure._probe)  # the net in train mode: BatchNorm's batch statistics, as in the term
    divergence = (sure._probe * (moved - out)).mean() / eps
    data_term, _ = task.operator.loss(out, task.observed)
    assert float(loss.detach()) == pytest.approx(float(data_term + 2 * (25 / 255) ** 2 * divergence), rel=1e-4)
    # the probe is drawn from the task's seeded generator, a new one each iteration
    first = sure._probe.clone()
    sure.before_iteration(task)
    assert not torch.equal(first, sure._probe)


def test_sure_takes_a_given_sigma_else_estimates_it_from_an_observation_alone(tmp_path):
    from PIL import Image

    given, _ = prepared(["regularizer=sure", "regularizer.sigma=10", "task.sigma=25", "net.input_depth=3"])
    assert given.regularizer.sigma == pytest.approx(10 / 255) and "sigma=10" in given.regularizer.describe()
    assert given.reg_noise_std == pytest.approx(10 / 255)
    kept, _ = prepared(["regularizer=sure", "regularizer.jitter=null", "task.reg_noise_std=0.02", "net.input_depth=3"])
    assert kept.reg_noise_std == 0.02
    torch.manual_seed(0)
    smooth = torch.linspace(0, 1, 64).expand(3, 64, 64)
    noisy = (smooth + 20 / 255 * torch.randn(3, 64, 64)).clamp(0, 1)
    path = tmp_path / "noisy.png"
    Image.fromarray((noisy.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)
    alone, _ = prepared(["regularizer=sure", "net.input_depth=3", "data.image=null", f"data.observed={path}"])
    assert alone.regularizer.sigma * 255 == pytest.approx(20, abs=2)


def test_sure_averages_the_outputs_from_its_own_average_from_in_place_of_the_tasks():
    task, _ = prepared(["regularizer=sure", "regularizer.average_from=7", "task.average_from=3", "net.input_depth=3"])
    assert task.average_from == 7 and "average_from=7" in task.regularizer.describe()
    sure_off = ["regularizer=sure", "regularizer.average_from=null", "net.input_depth=3"]
    kept, _ = prepared([*sure_off, "task.average_from=3"])
    assert kept.average_from == 3


def test_sure_at_its_defaults_denoises_by_a_margin(run_dip):
    m, run_dir = run_dip([*TINY, "task=denoising", "task.sigma=25", "regularizer=sure", "net.input_depth=3",
                          "iterations=500"])  # fmt: skip
    assert m["psnr_final"] > m["psnr_observed"] + 3, m
    assert "_target_: dip_lightning.regularizers.SURE" in (run_dir / "config.yaml").read_text()


def _correlated(tmp_path):
    """A flat grey photo with spatially correlated noise (white noise blurred by a 3x3 box)."""
    from PIL import Image

    torch.manual_seed(0)
    noise = torch.nn.functional.avg_pool2d(torch.randn(1, 3, 66, 66), 3, stride=1)[0] * 3 * 15 / 255  # blurred
    noisy = (0.5 + noise).clamp(0, 1)
    path = tmp_path / "correlated.png"
    Image.fromarray((noisy.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)
    return path


def test_sure_refuses_correlated_noise_and_runs_unpacked(tmp_path):
    from dip_lightning.run.packs import pack_key
    from dip_lightning.run.prepare import prepare_run

    path = _correlated(tmp_path)
    with pytest.raises(DIPError, match=r"(?s)white Gaussian noise.*correlated.*regularizer\.sigma="):
        prepared(["regularizer=sure", "net.input_depth=3", "data.image=null", f"data.observed={path}"])
    # its term runs the run's own net, which a pack (stacked weights) does not train: such runs go alone
    r = prepare_run(compose_cfg([*TINY, "regularizer=sure", "net.input_depth=3", "iterations=2"]), tmp_path / "r")
    assert pack_key(r) is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["regularizer=aseqdip", "task.backtracking=false"], r"net\.input_depth=3"),
        (["regularizer=sure", "task=deblurring", "net.input_depth=3"], r"regularizer=sure .*denoising"),
        (["regularizer=sure", "regularizer.sigma=0", "net.input_depth=3"], r"regularizer\.sigma=0 .*0 < sigma"),
        (["regularizer=sure", "regularizer.epsilon=0", "net.input_depth=3"], r"regularizer\.epsilon=0 .*> 0"),
        (["regularizer=sure", "regularizer.jitter=-1", "net.input_depth=3"], r"regularizer\.jitter=-1 .*>= 0"),
        (["regularizer=sure", "regularizer.average_from=-5", "net.input_depth=3"], r"regularizer\.average_from=-5 "),
        (["regularizer=self_guided", "net.input_depth=3", "task.backtracking=true"], r"task\.backtracking=false"),
        (["regularizer=tv", "regularizer.weight=-1"], r"regularizer\.weight=-1 .*weight >= 0"),
        (["regularizer=aseqdip", "regularizer.inner_steps=0", *IMAGE_INPUT], r"inner_steps=0 .*>= 1"),
        (["regularizer=self_guided", "regularizer.lr_z=0", *IMAGE_INPUT], r"lr_z=0 .*> 0"),
        (["regularizer=self_guided", "regularizer.noise_std=0", *IMAGE_INPUT], r"noise_std=0 .*> 0"),
    ],
)
def test_a_regulariser_that_cannot_run_is_refused_with_the_fix(overrides, message):
    with pytest.raises(DIPError, match=message):
        prepared(overrides)


@pytest.mark.parametrize(
    "task",
    [
        ["task=denoising"],
        ["task=deblurring"],
        ["task=super_resolution", "task.factor=2"],
        ["task=inpainting", "data.mask=random"],
        ["task=jpeg"],
    ],
    ids=lambda t: t[0].split("=")[1],
)
@pytest.mark.parametrize("regularizer", ["tv", "self_guided", "aseqdip"])
def test_every_image_task_runs_with_each_regulariser(run_dip, task, regularizer):
    extra = IMAGE_INPUT if regularizer != "tv" else []
    m, run_dir = run_dip([*TINY, *task, f"regularizer={regularizer}", *extra, "iterations=3", "chunk=3"])
    assert m["iterations"] == 3 and (run_dir / "restored.png").exists()
    assert f"_target_: dip_lightning.regularizers.{CLASSES[regularizer]}" in (run_dir / "config.yaml").read_text()


@pytest.mark.parametrize("regularizer", ["self_guided", "aseqdip", "sure"])
def test_a_resumed_run_with_a_changing_input_matches_the_uninterrupted_one(run_dip, tmp_path, regularizer):
    # sure: its input does not change, but its term draws a probe each iteration, which a resume must draw alike
    base = [*TINY, f"regularizer={regularizer}", *IMAGE_INPUT, "chunk=10", "iterations=30", "cpu_threads=1"]
    straight, straight_dir = run_dip(base, run_dir=tmp_path / "straight")
    killed = tmp_path / "killed"
    with pytest.raises(Interrupted):  # SIGTERM at iteration 10 (test_resume's hook), a checkpoint written
        run_dip([*base, "+callbacks.kill._target_=test_resume.SignalAt", "+callbacks.kill.at=10"], run_dir=killed)
    resumed, resumed_dir = run_dip([*base, f"resume={killed}"], run_dir=tmp_path / "resumed")
    for key in ("psnr_final", "psnr_best", "best_step", "iterations"):
        assert straight[key] == resumed[key], key
    for name in ("restored.png", "best.png"):
        assert (straight_dir / name).read_bytes() == (resumed_dir / name).read_bytes(), name


def test_sure_states_that_no_rule_chooses_its_result_without_ground_truth():
    gt_free = ["data.image=null", "data.observed=noisy.png"]
    assert compose_cfg([*TINY, *gt_free]).gt_free_rule == "discrepancy"  # plain DIP: the task's rule
    sure = compose_cfg([*TINY, *gt_free, "regularizer=sure"])  # SURE does not chase the noise: its last average
    assert sure.gt_free_rule is None and sure.without_ground_truth is None
    assert compose_cfg([*TINY, *gt_free, "regularizer=sure", "without_ground_truth=discrepancy"]).gt_free_rule == (
        "discrepancy"
    )  # asked for, given


def _noisy_photo(path, channels: int = 3):
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    smooth = torch.linspace(0.15, 0.85, 48).expand(channels, 48, 48)
    noisy = (smooth + 20 / 255 * torch.randn(channels, 48, 48, generator=rng)).clamp(0, 1)
    array = (noisy.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    Image.fromarray(array[..., 0] if channels == 1 else array).save(path)
    return path


def test_a_run_without_ground_truth_gets_the_tasks_gt_free_variant(tmp_path):
    from dip_lightning.run.gt_free import choose_regularizer

    base = [o for o in TINY if o != "gt_free_regularizer=null"]  # the default: the task's variant
    photo = ["data.crop=null", "data.image=null", f"data.observed={_noisy_photo(tmp_path / 'noisy.png')}"]
    cfg = compose_cfg([*base, *photo, "iterations=7"])  # a count the command line did not give (given=[])
    choose_regularizer(cfg, given=[])
    assert cfg.regularizer._target_.endswith("SURE") and cfg.net.input_depth == 3  # conf/task/denoising.yaml
    assert cfg.iterations == cfg.gt_free_regularizer.iterations != 7  # the variant's own count
    assert cfg.without_ground_truth is None and cfg.gt_free_rule is None
    given = compose_cfg([*base, *photo, "iterations=30"])
    choose_regularizer(given, given=["iterations=30"])  # the command line's count stands
    assert given.regularizer._target_.endswith("SURE") and given.iterations == 30
    gray = compose_cfg(
        [*base, "data.crop=null", "data.image=null", f"data.observed={_noisy_photo(tmp_path / 'g.png', 1)}"]
    )
    choose_regularizer(gray, given=[])
    assert gray.net.input_depth == 1  # the photo's channels
    for kept in (["regularizer=tv"], ["gt_free_regularizer=null"], ["task=deblurring"]):  # a choice, none, none
        cfg = compose_cfg([*base, *photo, *kept])
        choose_regularizer(cfg, given=[])
        assert not cfg.regularizer._target_.endswith("SURE") and cfg.net.input_depth == 32, kept
    correlated = compose_cfg([*base, "data.crop=null", "data.image=null", f"data.observed={_correlated(tmp_path)}"])
    choose_regularizer(correlated, given=[])  # sure declines correlated noise: plain DIP and its rule
    assert correlated.regularizer._target_.endswith("NoRegularizer") and correlated.gt_free_rule == "discrepancy"
    truth = compose_cfg(base)  # with a ground truth: plain DIP
    choose_regularizer(truth, given=[])
    assert truth.regularizer._target_.endswith("NoRegularizer")
    bad = compose_cfg([*base, *photo, "gt_free_regularizer.iterations=abc"])
    with pytest.raises(DIPError, match=r"gt_free_regularizer=.*'abc'.*iterations: a whole number"):
        choose_regularizer(bad, given=[])


def test_the_gt_free_variant_runs_from_the_command_line(tmp_path):
    from conftest import dip_cli

    base = [o for o in TINY if o != "gt_free_regularizer=null"]
    photo = _noisy_photo(tmp_path / "noisy.png")
    out = tmp_path / "run"
    args = [
        *base,
        "data.crop=null",
        "data.image=null",
        f"data.observed={photo}",
        "iterations=40",
        f"hydra.run.dir={out}",
    ]
    proc = dip_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = (out / "config.yaml").read_text()
    assert "_target_: dip_lightning.regularizers.SURE" in recorded and "iterations: 40" in recorded
    assert (out / "restored.png").exists() and "regularizer: sure for a run without ground truth" in proc.stdout
