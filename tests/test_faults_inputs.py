"""Inputs that used to give a wrong result reported as a success, or no word at all (the fault probe "Nothing lost,
nothing wrong reported as a success"): each is now refused in one paragraph, or made right, as its test says.

- float images (PIL mode F) outside [0, 1] or with NaN/inf pixels are refused, naming the file and the range;
- an EXIF-rotated JPEG is read upright, crop and header size included;
- a FIFO or a character device given as an image is refused before it is opened (it used to block forever);
- metrics.json is strict JSON: a non-finite value (task.sigma=0: PSNR of the observation = inf) is null, with a note;
- an unknown top-level key (+iteration=3000) is refused with the closest valid key; a key that another value
  interpolates (+stem=... for data.image=${stem}_GT.png, as the paper tables' sweeps do) is not unknown;
- cpu_threads beyond the CPUs this process may use is capped, with a warning;
- seed outside 0..2**32-1 is refused in one paragraph, and so is a required key deleted with ~key;
- chunk beyond 10000 is refused; a signal ends the chunk at the next iteration, with a checkpoint there.
"""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg, dip_cli
from PIL import Image, ImageOps

from dip_lightning.callbacks.roles import IterationHook
from dip_lightning.checkpoint import CHECKPOINT, Interrupted
from dip_lightning.config.validate import validate_config
from dip_lightning.data.io import read_image, read_size, write_json
from dip_lightning.errors import DIPError

FAST = [*TINY, "cpu_threads=1", "trainer.accelerator=cpu"]


def save_float_tiff(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(np.asarray(array, dtype=np.float32), mode="F").save(path)
    return path


def gradient(h: int = 40, w: int = 40) -> np.ndarray:
    return np.add.outer(np.arange(h), np.arange(w)).astype(np.float32) / (h + w - 2)


# -------------------------------------------------------------------------------------------- float images (4, 9)
@pytest.mark.parametrize(("scale", "shown"), [(255.0, "255"), (3.0, "3")])
def test_a_float_image_outside_0_1_is_refused_with_the_range_found(tmp_path, scale, shown):
    path = save_float_tiff(tmp_path / "float.tif", gradient() * scale)
    with pytest.raises(DIPError, match=r"float\.tif") as err:
        read_image(path)
    message = str(err.value)
    assert f"max {shown}" in message and "min 0" in message and "[0, 1]" in message
    assert "16-bit" in message and "\n" not in message


def test_a_float_image_in_0_1_is_read_as_is(tmp_path):
    array = gradient()
    path = save_float_tiff(tmp_path / "float.tif", array)
    assert torch.equal(read_image(path)[0, 0], torch.from_numpy(array))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_image_with_non_finite_pixels_is_refused(tmp_path, bad):
    array = gradient()
    array[3, 5] = bad
    path = save_float_tiff(tmp_path / "nan.tif", array)
    with pytest.raises(DIPError, match=r"nan\.tif.*non-finite") as err:
        read_image(path)
    assert "1 non-finite pixel" in str(err.value)


def test_dip_run_refuses_a_float_tiff_of_0_255_as_ground_truth(tmp_path):
    """It used to be an all-white ground truth and a fake 30 dB result: now exit 1, no outputs."""
    path = save_float_tiff(tmp_path / "gt.tif", gradient(64, 64) * 255)
    run_dir = tmp_path / "run"
    proc = dip_cli([*FAST, "iterations=5", f"data.image={path}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "gt.tif" in proc.stderr and "[0, 1]" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run_dir / "metrics.json").exists()


# ------------------------------------------------------------------------------------------------ EXIF rotation (6)
def save_oriented(path: Path, array: np.ndarray, orientation: int, **kwargs) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, exif=exif, **kwargs)
    return path


def upright(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.float32) / 255.0


def test_an_exif_rotated_jpeg_is_read_upright(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)  # 40 wide, 24 high as stored
    path = save_oriented(tmp_path / "phone.jpg", stored, 6, quality=95)  # 6: turn 90 degrees clockwise to view
    img = read_image(path)
    assert img.shape == (1, 3, 40, 24)  # upright: 24 wide, 40 high
    assert torch.equal(img[0].permute(1, 2, 0), torch.from_numpy(upright(path)))
    assert read_size(path) == (40, 24)  # (height, width) as shown, for the size checks


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("crop", [(10, 7), (13, 30), (100, 100)])
def test_the_crop_of_an_oriented_image_is_the_centre_of_the_upright_image(tmp_path, orientation, crop):
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)  # odd and even sides: the centre's rounding
    path = save_oriented(tmp_path / "o.png", stored, orientation)
    full = upright(path)
    h, w = full.shape[:2]
    ch, cw = min(crop[0], h), min(crop[1], w)
    top, left = (h - ch) // 2, (w - cw) // 2
    expected = torch.from_numpy(full[top : top + ch, left : left + cw])
    assert torch.equal(read_image(path, crop)[0].permute(1, 2, 0), expected)


# ------------------------------------------------------------------------------------------ not a regular file (19)
def test_a_fifo_given_as_an_image_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    code = f"from dip_lightning.data.io import read_image\nread_image({str(fifo)!r})"
    try:  # before the fix the reader blocks in open() until a writer comes: the timeout ends it
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a FIFO as an image blocked")
    assert proc.returncode != 0 and "DIPError" in proc.stderr
    assert "pipe.png" in proc.stderr and "not a regular file" in proc.stderr and "FIFO" in proc.stderr


def test_a_character_device_given_as_an_image_is_refused():
    with pytest.raises(DIPError, match=r"'/dev/zero' is not a regular file.*character device"):
        read_image("/dev/zero")


# ---------------------------------------------------------------------------------------------- strict JSON (7)
def strict_json(path: Path) -> dict:
    def refuse(name):
        raise AssertionError(f"{path.name} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_write_json_writes_null_for_non_finite_numbers(tmp_path):
    data = {"a": float("inf"), "b": [float("nan"), 1.5], "c": {"d": np.float32("-inf"), "e": torch.tensor(2.0)}}
    out = strict_json(write_json(tmp_path / "m.json", data))
    assert out == {"a": None, "b": [None, 1.5], "c": {"d": None, "e": 2.0}}


def test_sigma_0_writes_strict_json_with_a_note(run_dip, tmp_path):
    metrics, run_dir = run_dip([*FAST, "task=denoising", "task.sigma=0", "iterations=3"])
    on_disk = strict_json(run_dir / "metrics.json")
    json.dumps(on_disk, allow_nan=False)
    assert on_disk["psnr_observed"] is None and metrics["psnr_observed"] is None
    assert any("psnr_observed" in w and "equals the ground truth" in w for w in on_disk["warnings"])
    assert isinstance(on_disk["psnr_final"], float)


def test_dip_gather_reads_a_null_psnr_observed(tmp_path):
    from dip_lightning.sweeps.gather import main

    sweep = tmp_path / "sweep"
    for num, observed in enumerate((float("inf"), 20.0)):
        job = sweep / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- task.sigma={25 * num}\n")
        write_json(job / "metrics.json", {"psnr_observed": observed, "psnr_final": 40.0 + num, "psnr_best": 41.0})
    assert main([str(sweep)]) == 0
    rows = (sweep / "results.csv").read_text().splitlines()
    assert rows[1].split(",")[:2] == ["0", "ok"] and rows[2].split(",")[:2] == ["1", "ok"]
    assert ",inf," not in (sweep / "results.csv").read_text().lower()


# ------------------------------------------------------------------------------------------ unknown keys (8)
def test_an_unknown_top_level_key_is_refused_with_the_closest_one():
    with pytest.raises(DIPError, match=r"iteration=3000.*not a key.*did you mean iterations\?") as err:
        validate_config(compose_cfg(["+iteration=3000"]))
    assert "\n" not in str(err.value)


def test_an_unknown_key_without_a_close_one_lists_the_keys():
    with pytest.raises(DIPError, match=r"\+zzzz=1: zzzz is not a key.*the top-level keys are .*iterations, "):
        validate_config(compose_cfg(["+zzzz=1"]))


def test_a_helper_key_that_another_value_interpolates_is_accepted():
    """The paper tables' sweeps: +stem=<image> with data.image=folder/${stem}_GT.png (experiments/paper)."""
    validate_config(compose_cfg(["+stem=a", "data.image=denoise9/${stem}_GT.png"]))
    validate_config(compose_cfg(["data.image='b\\${x}.png'"]))  # an escaped ${x} is text (a file's name), no key
    with pytest.raises(DIPError, match=r"data\.chunk='\$\{chunk\}' interpolates \$\{chunk\}.*~chunk"):
        validate_config(compose_cfg(["~chunk"]))


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["experiment=denoise_f16"],
        ["experiment=flash_no_flash_cave"],
        ["launcher=submitit_slurm"],
        ["launcher=joblib"],
        ["launcher=joblib_gpus"],
        ["hparams_search=dip_optuna"],
        ["task=super_resolution", "net=decoder"],
    ],
)
def test_the_shipped_configs_have_no_unknown_key(overrides):
    validate_config(compose_cfg(overrides))


def test_dip_run_refuses_an_unknown_key_before_running(tmp_path):
    proc = dip_cli([*FAST, "+iteration=3000", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 1 and "did you mean iterations?" in proc.stderr and "Traceback" not in proc.stderr


# -------------------------------------------------------------------------------------------------- threads (20)
def test_cpu_threads_beyond_the_usable_cpus_are_capped_with_a_warning(caplog):
    from dip_lightning.cpu import allowed_cpus, set_threads

    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.WARNING, logger="dip_lightning"):
            threads, why = set_threads(256)
        usable = len(allowed_cpus())
        assert threads == usable == torch.get_num_threads()
        assert f"cpu_threads=256 capped at {usable}" in caplog.text
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------- seed, ~key (21)
@pytest.mark.parametrize("seed", ["-1", "4294967296", "9223372036854775807"])
def test_a_seed_outside_what_seeding_takes_is_refused(seed):
    with pytest.raises(DIPError, match=rf"seed={seed} is not valid.*0 to 4294967295"):
        validate_config(compose_cfg([f"seed={seed}"]))


def test_the_last_seed_of_an_ensemble_must_fit_too():
    validate_config(compose_cfg(["seed=4294967295"]))
    with pytest.raises(DIPError, match=r"ensemble=4.*seed=4294967295.*4294967298"):
        validate_config(compose_cfg(["seed=4294967295", "ensemble=4"]))


def test_a_deleted_required_key_is_one_paragraph(tmp_path):
    with pytest.raises(DIPError, match=r"seed is required.*~seed"):
        validate_config(compose_cfg(["~seed"]))
    proc = dip_cli([*FAST, "~seed", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "error: seed is required" in proc.stderr and "Traceback" not in proc.stderr


# -------------------------------------------------------------------------------------------------- chunk (18)
def test_a_chunk_beyond_the_maximum_is_refused():
    validate_config(compose_cfg(["chunk=10000"]))
    with pytest.raises(DIPError, match=r"chunk=1000000000 is not valid.*10000"):
        validate_config(compose_cfg(["chunk=1000000000"]))


class SignalAtIteration(IterationHook):
    """Sends this process SIGTERM during iteration `at`, inside a chunk."""

    def __init__(self, at: int):
        self.at = at

    def on_dip_iteration(self, task, it) -> None:
        if it.step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_inside_a_chunk_ends_it_at_the_next_iteration(run_dip, tmp_path):
    run_dir = tmp_path / "killed"
    args = [*FAST, "chunk=50", "iterations=100", "+callbacks.kill._target_=test_faults_inputs.SignalAtIteration"]
    with pytest.raises(Interrupted, match="SIGTERM at iteration 8"):  # iteration 7 ran, then the chunk ended
        run_dip([*args, "+callbacks.kill.at=7"], run_dir=run_dir)
    assert torch.load(run_dir / CHECKPOINT, weights_only=True)["iteration"] == 8
    assert not (run_dir / "metrics.json").exists()
    assert signal.getsignal(signal.SIGTERM) is not None


def test_chunk_auto_stays_within_the_maximum():
    """chunk=auto stays within the maximum: the schedule's own cap (500) is below it."""
    from dip_lightning.config.validate import MAX_CHUNK
    from dip_lightning.data.schedule import ChunkSchedule

    assert ChunkSchedule(10**6).max_chunk <= MAX_CHUNK


def test_a_file_named_like_an_interpolation_is_read_as_its_name_through_a_sweep(tmp_path):
    import skimage.data
    from conftest import TINY, dip_cli, save_png
    from omegaconf import OmegaConf

    from dip_lightning.sweeps.gather import gather

    images = tmp_path / "d"
    images.mkdir()
    save_png(images / "${oc.env:HOME}.png", skimage.data.chelsea()[100:164, 150:214])
    save_png(images / "plain.png", skimage.data.coffee()[100:164, 150:214])
    sweep = tmp_path / "sweep"
    proc = dip_cli(
        ["-m", *TINY, "iterations=10", "cpu_threads=1", f"data.image={images}", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows, _ = gather(sweep)
    assert sorted(r["image_path"] for r in rows) == sorted(
        [str(images / "${oc.env:HOME}.png"), str(images / "plain.png")]
    )
    job = next(r["job"] for r in rows if "oc.env" in r["image_path"])
    recorded = OmegaConf.load(sweep / job / "config.yaml")  # read back as text, not as an interpolation
    assert recorded.data.image == str(images / "${oc.env:HOME}.png")
