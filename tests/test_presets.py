"""Every experiment preset runs (iterations=5, small crops) on stand-in images of the reference's names and sizes,
generated in a temporary data.root, so the test behaves the same with or without ../shared/data."""

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_cfg
from PIL import Image

from dip_lightning.config.compose import CONFIG_DIR
from dip_lightning.errors import DIPError

# The files the presets read, with the sizes and modes of the reference repository's images.
STAND_INS = {
    "denoising/F16_GT.png": ((512, 512), "RGB"),
    "denoising/snail.jpg": ((400, 261), "RGB"),
    "sr/zebra_GT.png": ((584, 388), "RGB"),
    "inpainting/vase.png": ((320, 320), "RGB"),
    "inpainting/vase_mask.png": ((320, 320), "mask"),
    "inpainting/kate.png": ((512, 512), "RGB"),
    "inpainting/kate_mask.png": ((512, 512), "mask"),
    "inpainting/library.png": ((704, 448), "RGB"),
    "inpainting/library_mask.png": ((704, 448), "mask"),
    "restoration/barbara.png": ((512, 512), "L"),
    "restoration/kate.png": ((512, 512), "RGB"),
    "flash_no_flash/cave01_00_flash.jpg": ((774, 706), "RGB"),
    "flash_no_flash/cave01_01_noflash.jpg": ((774, 706), "RGB"),
    "feature_inversion/building.jpg": ((227, 227), "RGB"),
}
# physics_* presets need the deepinv extra: tests/physics runs them (in .venv-physics, make test)
PRESETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml") if not p.stem.startswith("physics_"))
EXTRA = {  # what a smoke run needs beyond iterations=5 and a small crop
    "feature_inversion": ["task.weights=random"],
    "feature_inversion_noisy": ["task.weights=random"],
    "activation_maximization": ["task.weights=random", "task.image_size=64", "task.generate_size=null"],
    "activation_maximization_fc8": ["task.weights=random"],
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dip-repo")
    rng = np.random.default_rng(0)
    for name, ((w, h), mode) in STAND_INS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if mode == "mask":  # white = known, with black holes
            arr = np.full((h, w), 255, np.uint8)
            arr[h // 3 : h // 3 + 20, :] = 0
        else:  # smooth colour gradients plus a little texture, like a photo
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 200 + rng.normal(0, 10, (h, w, 3))
            arr = np.clip(base, 0, 255).astype(np.uint8)
            arr = arr[..., 0] if mode == "L" else arr
        Image.fromarray(arr).save(root / name)
    return root


def test_every_case_of_the_reference_table_has_a_preset():
    assert {
        "denoise_f16",
        "jpeg_snail",
        "sr_zebra_x4",
        "sr_zebra_x8",
        "inpaint_vase",
        "inpaint_kate",
        "inpaint_library",
        "restore_barbara",
        "restore_kate",
        "flash_no_flash_cave",
        "feature_inversion",
        "activation_maximization",
    } <= set(PRESETS)


def smoke_overrides(preset: str, data_root) -> list[str]:
    """A 5-iteration run of `preset` on the stand-in images, at the smallest crop its net takes."""
    cfg = compose_cfg([f"experiment={preset}"])
    # BatchNorm needs > 1 pixel at the deepest scale, and the padding of library's 5x5 kernels needs 3
    crop = 192 if preset == "inpaint_library" else 128 if len(cfg.net.num_channels_down) == 6 else 64
    return [
        f"experiment={preset}",
        f"data.root={data_root}",
        "iterations=5",
        "chunk=5",
        f"data.crop={crop}",
        "logger=none",
        "callbacks=none",
        *EXTRA.get(preset, []),
    ]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs(run_dip, data_root, preset):
    cfg = compose_cfg([f"experiment={preset}"])
    if cfg.data.image is not None:  # a preset of the reference's images (gt_free_best takes yours: data.observed)
        assert str(cfg.data.root).endswith("shared/data/dip-repo") or "DIP_DATA_ROOT" in os.environ
    m, run_dir = run_dip(smoke_overrides(preset, data_root))
    assert m["iterations"] == 5 and (run_dir / "restored.png").exists()


@pytest.mark.parametrize(
    "preset, values",
    [
        ("sr_zebra_x4", {"iterations": 2000, "optimizer.lr": 0.01, "task.reg_noise_std": 0.03, "task.factor": 4}),
        ("sr_zebra_x8", {"iterations": 4000, "task.reg_noise_std": 0.05, "task.factor": 8, "task.kernel": "lanczos2"}),
        ("inpaint_vase", {"iterations": 5001, "net.input_depth": 2, "task.input_type": "meshgrid"}),
        (
            "inpaint_library",
            {"iterations": 3001, "net.input_depth": 1, "net.filter_size_down": 5, "net.need1x1_up": False},
        ),
        (
            "restore_barbara",
            {
                "iterations": 11000,
                "optimizer.lr": 0.001,
                "task.kept": 0.5,
                "net.output_channels": 1,
                "data.pad": 1,
                "task.backtracking": True,
                "task.backtrack_mode": "reference",
                "task.backtrack_check_every": 50,
            },
        ),
        ("restore_kate", {"iterations": 1000, "task.kept": 0.02, "net.downsample_mode": "avg"}),
        ("flash_no_flash_cave", {"iterations": 601, "optimizer.lr": 0.1, "net.input_depth": 3}),
        ("feature_inversion", {"iterations": 3100, "optimizer.lr": 0.001, "task.layer": "fc6", "net.pad": "zero"}),
        ("jpeg_snail", {"iterations": 2400, "net.input_depth": 3, "task.exp_weight": 0.99}),
    ],
)
def test_presets_carry_the_reference_settings(preset, values):
    from omegaconf import OmegaConf

    cfg = compose_cfg([f"experiment={preset}"])
    for key, value in values.items():
        assert OmegaConf.select(cfg, key) == value, (preset, key)


def test_a_missing_preset_image_is_named(run_dip, tmp_path):
    with pytest.raises(DIPError, match=r"inpainting/kate\.png.*does not exist"):
        run_dip(["experiment=inpaint_kate", f"data.root={tmp_path}", "iterations=1", "logger=none"])


def test_the_readme_task_table_lists_every_task_and_preset():
    readme = (Path(CONFIG_DIR).parent / "README.md").read_text()
    table = readme.split("## Tasks", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    listed = " ".join(rows)
    for group in ("task", "experiment"):
        for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
            assert f"`{path.stem}`" in listed, f"README's task table misses {group}={path.stem}"


def test_the_readmes_run_and_sweep_commands_compose():
    """Every dip-run line of the README's "Running" and "A sweep" blocks is a config that composes as written."""
    import shlex

    readme = (Path(CONFIG_DIR).parent / "README.md").read_text()
    lines = []
    for heading in ("## Running", "## A sweep"):
        section = readme[readme.index(heading) :]
        block = section[section.index("```bash") + 7 : section.index("```", section.index("```bash") + 7)]
        lines += [line.split("#")[0] for line in block.splitlines() if line.startswith("dip-run ")]
    assert len(lines) >= 8
    for line in lines:
        args = [a for a in shlex.split(line)[1:] if "=" in a and not a.startswith(("-", "hydra."))]  # not --cfg job
        compose_cfg([a.split(",")[0] for a in args])  # a sweep's first job; a wrong group, key or value fails here
