"""What the reference code does, checked piece by piece where the project follows it (issue: fidelity): the Caffe
CNNs and their input, the sizes and crops of feature inversion and activation maximisation, the matcher's
objective, the notebooks' nets, the jitter schedule."""

import pytest
import torch
from conftest import TINY, compose_cfg
from hydra.utils import instantiate

from dip_lightning.nets.cnns import FeatureExtractor, build_cnn, load_cnn
from dip_lightning.tasks.features import UnitActivation, resize_shorter_side


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_caffe_alexnet_is_bvlc_alexnet_with_the_reference_layer_names():
    net = build_cnn("alexnet_caffe")
    names = [n for n, _ in net.named_children()]
    assert names[:4] == ["conv1", "relu1", "norm1", "pool1"] and names[4:8] == ["conv2", "relu2", "norm2", "pool2"]
    assert names[-1] == "fc8" and "torch_view" in names
    assert params(net) == 60_965_224  # Caffe's bvlc_alexnet
    assert net.conv1.weight.shape == (96, 3, 11, 11) and net.conv2.weight.shape == (256, 48, 5, 5)  # groups=2
    assert isinstance(net.norm1, torch.nn.LocalResponseNorm)
    # ceil-mode pooling: the reference feeds 224 px (feature inversion) and 227 px (activation maximisation)
    assert net(torch.zeros(1, 3, 224, 224)).shape == net(torch.zeros(1, 3, 227, 227)).shape == (1, 1000)


def test_caffe_input_is_bgr_times_255_minus_the_bgr_mean():
    extractor = FeatureExtractor(build_cnn("alexnet_caffe"), "conv1")
    x = torch.zeros(1, 3, 1, 1)
    x[0, :, 0, 0] = torch.tensor([1.0, 0.5, 0.0])  # R, G, B
    out = extractor.preprocess(x)[0, :, 0, 0]
    assert torch.allclose(out, torch.tensor([0.0 - 103.939, 127.5 - 116.779, 255.0 - 123.680]))
    torchvision_style = FeatureExtractor(build_cnn("alexnet"), "conv1").preprocess(x)[0, :, 0, 0]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(torchvision_style, (x[0, :, 0, 0] - mean) / std)


def test_a_reference_layout_state_dict_loads_and_a_torchvision_one_is_named_wrong(tmp_path):
    torch.manual_seed(0)
    saved = build_cnn("alexnet_caffe")
    torch.save(saved.state_dict(), tmp_path / "alexnet_caffe.pth")
    loaded = load_cnn("alexnet_caffe", str(tmp_path / "alexnet_caffe.pth"))
    assert torch.equal(loaded.fc8.weight, saved.fc8.weight) and "conv1.weight" in saved.state_dict()
    torch.save(build_cnn("alexnet").state_dict(), tmp_path / "torchvision.pth")
    from dip_lightning.errors import DIPError

    with pytest.raises(DIPError, match=r"torchvision\.pth.*does not fit the reference code's alexnet_caffe"):
        load_cnn("alexnet_caffe", str(tmp_path / "torchvision.pth"))


@pytest.mark.parametrize(
    "preset, count",
    [("activation_maximization", 2_948_567), ("feature_inversion", 2_606_763), ("feature_inversion_noisy", 2_583_123)],
)
def test_the_notebooks_nets_have_their_parameter_counts(preset, count):
    cfg = compose_cfg([f"experiment={preset}"])
    assert params(instantiate(cfg.net, output_channels=3)) == count


class Logits(torch.nn.Module):
    """A stand-in extractor with known outputs: `value` everywhere, as (1, 10) logits or (1, 4, 60, 60) maps."""

    def __init__(self, value: float, conv: bool):
        super().__init__()
        self.value, self.conv = value, conv

    def forward(self, x):
        shape = (1, 4, 60, 60) if self.conv else (1, 10)
        return torch.full(shape, self.value) + 0 * x.sum()

    def preprocess(self, x):
        return x


def test_the_fc_objective_drives_a_logit_to_300_times_5():
    op = UnitActivation(Logits(120.0, conv=False), unit=3)
    loss, _ = op.loss(torch.zeros(1, 3, 8, 8), None)
    assert loss.item() == pytest.approx(5 * (300 - 120))
    loss, _ = UnitActivation(Logits(420.0, conv=False), unit=3).loss(torch.zeros(1, 3, 8, 8), None)
    assert loss.item() == pytest.approx(5 * 120)  # overshooting costs too: |300 - logit|


def test_the_conv_objective_sums_the_central_window_of_one_map():
    op = UnitActivation(Logits(0.5, conv=True), unit=1, window=20)
    loss, _ = op.loss(torch.zeros(1, 3, 8, 8), None)
    assert loss.item() == pytest.approx(-5 * 0.5 * 40 * 40)  # rows and columns 30-20 .. 30+20 of one map
    mean, _ = UnitActivation(Logits(0.5, conv=True), unit=1, objective="mean").loss(torch.zeros(1, 3, 8, 8), None)
    assert mean.item() == pytest.approx(-0.5)


def test_feature_inversion_resizes_the_target_to_224_and_crops_a_256_output(tmp_path):
    from PIL import Image

    from dip_lightning.run.prepare import build_run

    (tmp_path / "feature_inversion").mkdir()
    Image.new("RGB", (227, 227), (120, 60, 30)).save(tmp_path / "feature_inversion" / "building.jpg")
    overrides = ["experiment=feature_inversion", f"data.root={tmp_path}", "task.weights=random", "logger=none"]
    net, _, task, data = build_run(compose_cfg(overrides))
    task.prepare(data)
    assert tuple(data.clean.shape[-2:]) == (227, 227)  # read whole, and left as read
    assert tuple(task.clean.shape[-2:]) == (224, 224)  # the target: resized as the reference's Resize(224)
    assert tuple(task.z.shape[-2:]) == (256, 256)  # the net generates at 256
    with torch.no_grad():
        assert tuple(task.net(task.z).shape[-2:]) == (224, 224)  # and the CNN sees the top-left 224 crop
    assert net is task.net


def test_activation_maximization_crops_227_for_caffe_alexnet_and_224_for_the_others():
    from dip_lightning.run.prepare import build_run

    sizes = {}
    for cnn in ("alexnet_caffe", "alexnet"):
        cfg = compose_cfg(["experiment=activation_maximization", "task.weights=random", f"task.cnn={cnn}"])
        _, _, task, data = build_run(cfg)
        task.prepare(data)
        sizes[cnn] = (tuple(task.z.shape[-2:]), tuple(task.out_avg.shape[-2:]))
    assert sizes == {"alexnet_caffe": ((256, 256), (227, 227)), "alexnet": ((256, 256), (224, 224))}


def test_resize_keeps_a_square_centre_of_a_non_square_target():
    img = torch.rand(1, 3, 300, 450)
    out = resize_shorter_side(img, 224)
    assert out.shape == (1, 3, 224, 224)


def test_the_jitter_schedule_changes_the_std_at_its_iterations():
    from test_tasks import prepared

    task = prepared(["task.reg_noise_std=10", "task.reg_noise_schedule={3: 2.0, 5: 0.5}"])
    stds = []
    for it in range(7):
        task.iteration = it
        task.draw_jitter()
        stds.append(float((task.net_input() - task.z).std()))
    assert stds[0] == pytest.approx(10, rel=0.1) and stds[2] == pytest.approx(10, rel=0.1)
    assert stds[3] == pytest.approx(2, rel=0.1) and stds[5] == pytest.approx(0.5, rel=0.1)


def test_a_jitter_schedule_without_jitter_is_a_clear_error(run_dip):
    from dip_lightning.errors import DIPError

    with pytest.raises(DIPError, match=r"reg_noise_schedule is set but task\.reg_noise_std=0"):
        run_dip([*TINY, "iterations=2", "task.reg_noise_std=0", "task.reg_noise_schedule={3: 2.0}"])


def test_final_input_jittered_is_the_net_on_the_last_jittered_input_and_both_are_reported(run_dip):
    args = [*TINY, "iterations=30", "task.reg_noise_std=0.1", "task.exp_weight=0"]
    clean, _ = run_dip(args)
    jittered, _ = run_dip([*args, "task.final_input=jittered"])
    for m in (clean, jittered):  # the same run: both results are scored either way
        assert m["psnr_final_clean"] != m["psnr_final_jittered"]
    assert clean["psnr_final"] == clean["psnr_final_clean"] == jittered["psnr_final_clean"]
    assert jittered["psnr_final"] == jittered["psnr_final_jittered"]
    averaged, _ = run_dip([*TINY, "iterations=30", "task.reg_noise_std=0.1", "task.exp_weight=0.9"])
    assert "psnr_final_jittered" not in averaged  # the averaged output does not depend on the final input


def test_the_reference_sr_script_convention_on_a_fixed_pair():
    """super-resolution_eval_script.py: the saved uint8 result (truncated), Y in studio range, 4 px shaved at the
    top/left and 5 at the bottom/right; the project's default shaves 4 on every side of float images."""
    from dip_lightning.metrics import score

    truth = torch.full((1, 3, 20, 20), 100 / 255)
    off = truth.clone()
    off[..., 15, :] += 30 / 255  # row H-5: inside y_shaved:4, shaved by the script
    assert score(off, truth, "reference_script").item() == float("inf")
    assert score(off, truth, "y_shaved:4").item() < 40
    shifted = truth + 3.5 / 255  # saved as 103: 3 levels off everywhere, seen through Y's 219/255 scale
    expected = -20 * torch.log10(torch.tensor(3 / 255 * 219 / 255)).item()
    assert score(shifted, truth, "reference_script").item() == pytest.approx(expected, abs=1e-3)
    grey = torch.full((1, 1, 20, 20), 100 / 255)  # a grey image: three equal channels for the script
    assert score(grey + 3.5 / 255, grey, "reference_script").item() == pytest.approx(expected, abs=1e-3)


def test_sr_runs_score_in_the_chosen_convention(run_dip):
    args = [*TINY, "task=super_resolution", "iterations=5", "net=skip_small"]
    default, _ = run_dip(args)
    script, _ = run_dip([*args, "task.convention=reference_script"])
    assert default["psnr_convention"] == "y_shaved:4" and script["psnr_convention"] == "reference_script"
    assert script["psnr_final"] != default["psnr_final"]


def make_denoising(**kwargs):
    from test_task import make_task

    return make_task(**kwargs)


def test_reference_backtracking_restores_the_weights_only_and_still_takes_the_step():
    """The notebooks': the collapsed iterate enters the average, the weights go back to the last checked good ones,
    Adam's state is not restored and the step (with the collapsed gradient) is still applied."""
    task, opt = make_denoising(backtracking=True, backtrack_mode="reference", exp_weight=0.9)
    for _ in range(40):
        task.dip_iteration(opt)
    good = [p.detach().clone() for p in task.net.parameters()]
    good_m = [opt.state[p]["exp_avg"].clone() for p in task.net.parameters()]
    task.dip_iteration(opt)  # healthy and checked: its pre-step weights become the snapshot
    avg_before = task.out_avg.clone()
    with torch.no_grad():
        list(task.net.parameters())[-1].add_(1e4)  # the output bias: the output saturates at 1
    task.dip_iteration(opt)
    assert int(task.n_backtracks) == 1
    assert torch.allclose(task.out_avg, 0.9 * avg_before + 0.1 * torch.ones_like(avg_before), atol=1e-4)
    bias = list(task.net.parameters())[-1]
    assert (bias - good[-1]).abs().max() < 0.1  # back from +1e4 to the snapshot, then one Adam step
    moved = [not torch.equal(p, g) for p, g in zip(task.net.parameters(), good)]
    assert any(moved)  # the step after the restore was applied
    assert any(not torch.equal(opt.state[p]["exp_avg"], m) for p, m in zip(task.net.parameters(), good_m))


def test_backtracking_checks_only_the_iterations_it_is_told_to():
    task, opt = make_denoising(backtracking=True, backtrack_mode="reference", backtrack_check_every=5)
    while task.iteration < 41 or task.iteration % 5 == 0:  # stop just after a checked iteration
        task.dip_iteration(opt)
    with torch.no_grad():
        list(task.net.parameters())[-1].add_(1e4)
    task.dip_iteration(opt)  # not a multiple of 5: the collapse goes unchecked
    assert int(task.n_backtracks) == 0
    while task.iteration % 5:
        task.dip_iteration(opt)
    task.dip_iteration(opt)  # the next checked iteration sees it and restores
    assert int(task.n_backtracks) == 1
    skipping, _ = make_denoising(backtracking=True, backtrack_skip_every=100)
    skipping._check_count = torch.tensor(100)
    assert not bool(skipping._checked())
    skipping._check_count = torch.tensor(101)
    assert bool(skipping._checked())


def test_unknown_backtrack_settings_are_clear_errors():
    from dip_lightning.errors import DIPError

    with pytest.raises(DIPError, match=r"task\.backtrack_mode='notebook' is not known"):
        make_denoising(backtracking=True, backtrack_mode="notebook")
    with pytest.raises(DIPError, match=r"task\.backtrack_check_every=0 is not valid"):
        make_denoising(backtracking=True, backtrack_check_every=0)


def test_data_pad_keeps_the_reflection_padded_size_as_the_reference_barbara():
    from dip_lightning.run.prepare import build_run

    cfg = compose_cfg([*TINY, "task=restoration", "data.crop=64", "data.pad=1", "net.downsample_mode=stride"])
    _, _, task, data = build_run(cfg)
    task.prepare(data)
    assert tuple(data.clean.shape[-2:]) == (66, 66)  # not cropped back to the net's multiple
    assert torch.equal(data.clean[..., 0, 1:-1], data.clean[..., 2, 1:-1])  # row -1 mirrors row 1
    with torch.no_grad():
        assert tuple(task.net(task.z).shape[-2:]) == (66, 66)


def test_data_pad_with_a_net_that_cannot_keep_the_size_is_a_clear_error(run_dip):
    from dip_lightning.errors import DIPError

    with pytest.raises(DIPError, match=r"data\.pad=1 makes .* 66x66 pixels, but the net's output for it is 64x64"):
        run_dip([*TINY, "iterations=2", "data.crop=64", "data.pad=1", "net.downsample_mode=avg"])


def test_unet_and_resnet_are_the_references():
    unet = instantiate(compose_cfg(["net=unet"]).net, output_channels=3)
    assert params(unet) == 2_164_899  # the reference's UNet(feature_scale=4, bilinear, BatchNorm) at 32 input channels
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in unet.merges.modules())
    resnet = instantiate(compose_cfg(["net=resnet"]).net, output_channels=3)
    pads = [type(m).__name__ for m in resnet.model[2].modules() if "Pad" in type(m).__name__]
    assert pads == [] and isinstance(resnet.model[0][0], torch.nn.ReflectionPad2d)  # blocks zero-padded, ends not
    z = torch.rand(1, 32, 24, 24)
    assert unet(torch.rand(1, 32, 32, 32)).shape == (1, 3, 32, 32) and resnet(z).shape == (1, 3, 24, 24)


def test_the_trainable_in_net_downsampler_is_the_references_and_starts_as_the_fixed_one():
    overrides = ["net=skip", "net.downsample_mode=lanczos2"]
    torch.manual_seed(0)
    fixed = instantiate(compose_cfg(overrides).net, output_channels=3)
    torch.manual_seed(0)
    trained = instantiate(compose_cfg([*overrides, "net.trainable_downsampler=true"]).net, output_channels=3)
    assert params(trained) == 7_461_351  # the reference's skip128x5 with downsample_mode='lanczos2'
    assert params(fixed) == 2_217_831  # the kernel as a fixed filter adds no parameters
    trained.load_state_dict(fixed.state_dict(), strict=False)  # (its conv's init drew from the RNG, as the reference's)
    z = torch.rand(1, 32, 64, 64)
    with torch.no_grad():
        assert torch.allclose(trained(z), fixed(z), atol=1e-5)  # the kernel on the diagonal: the same filter at first
    trained(z).mean().backward()
    downsamplers = [m for m in trained.modules() if type(m).__name__ == "LanczosDownsampler"]
    assert downsamplers and downsamplers[0].conv.weight.grad.abs().sum() > 0  # and it learns


def test_optimize_input_trains_z_too_and_keeps_it_in_the_run_state():
    from test_tasks import prepared

    task = prepared(["task.optimize_input=true", "task.reg_noise_std=0", "task.backtracking=false"])
    opt = task.make_optimizer()
    z0 = task.z.detach().clone()
    for _ in range(3):
        task.dip_iteration(opt)
    assert not torch.equal(task.z, z0) and any(p is task.z for g in opt.param_groups for p in g["params"])
    assert torch.equal(task.run_state()["z"], task.z)
    fresh = prepared(["task.optimize_input=true", "task.reg_noise_std=0", "task.backtracking=false"])
    fresh.load_run_state(task.run_state())
    assert torch.equal(fresh.z, task.z)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimizer._target_=torch.optim.LBFGS"], r"LBFGS re-evaluates the loss .* use optimizer=adam"),
        (["task.optimize_input=true", "task.backtracking=true"], r"optimize_input=true with task\.backtracking"),
    ],
)
def test_what_the_loop_cannot_do_is_refused_clearly(run_dip, overrides, message):
    from dip_lightning.errors import DIPError

    with pytest.raises(DIPError, match=message):
        run_dip([*TINY, "iterations=2", *overrides])


def test_a_generate_size_the_net_cannot_make_is_a_clear_error():
    from dip_lightning.errors import DIPError
    from dip_lightning.run.prepare import build_run

    cfg = compose_cfg(["experiment=activation_maximization", "task.weights=random", "task.image_size=64"])
    cfg.task.generate_size = 64  # 6 scales with 5x5 reflection padding: the deepest map would be 1x1
    with pytest.raises(DIPError, match=r"generate_size=64 is not valid .* at least 192, e\.g\. 192"):
        build_run(cfg)
