"""The GPU paths, on CUDA (`pytest -m gpu`; every test here is skipped where torch sees no GPU).

Step 1 of the GPU check (experiments/gpu_check.py). Each test states what a user relies on when a run moves from
the CPU to a GPU: every preset runs, the on-device decisions (averaging, backtracking, best iterate, early stopping)
are the same as on the CPU for the same history, nothing waits on the host inside a chunk, an interrupted run
resumes to the same result, and jobs leased on one GPU never share it (unless given two slots).
"""

import functools
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY
from test_presets import PRESETS, data_root, smoke_overrides  # noqa: F401  (data_root is a fixture)
from test_resume import BASE as RESUME_BASE
from test_resume import assert_same_run
from torch import nn

from dip_lightning.callbacks import BestIterate
from dip_lightning.callbacks.discrepancy import Discrepancy
from dip_lightning.callbacks.early_stopping import ESEMV, ESWMV, PSNRPatience
from dip_lightning.callbacks.roles import RunHook
from dip_lightning.callbacks.self_validation import SelfValidation
from dip_lightning.data.datamodule import ImageData
from dip_lightning.history import COLUMNS as HISTORY
from dip_lightning.loop.iteration import Iterations
from dip_lightning.nets.base import Generator
from dip_lightning.tasks.denoising import Denoising

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by make gpu-check)")
GPU = ["trainer.accelerator=gpu"]


def on_gpu(test):
    """A GPU test: selected by `pytest -m gpu`, skipped without CUDA. The CPU halves of comparisons run everywhere."""
    return pytest.mark.gpu(needs_cuda(test))


@pytest.fixture(autouse=True)
def _nondeterministic_again():
    """trainer.deterministic=true switches torch's deterministic mode on for the whole process: switch it off."""
    yield
    torch.use_deterministic_algorithms(False)


@on_gpu
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_on_cuda(run_dip, data_root, preset):  # noqa: F811
    m, run_dir = run_dip([*smoke_overrides(preset, data_root), *GPU])
    assert m["device"].startswith("cuda:") and m["iterations"] == 5
    assert (run_dir / "restored.png").exists()


# ---------------------------------------------------------------------------- the same choices on CPU and CUDA
class ScriptedNet(Generator):
    """Plays back a fixed sequence of outputs, one per forward, so a run on any device sees the same history (a
    counter between calls: it cannot be packed, which a Generator in conf/net must be)."""

    def __init__(self, frames: torch.Tensor):
        super().__init__()
        self.input_depth, self.output_channels = 1, frames.shape[1]
        self.register_buffer("frames", frames)
        self.gain = nn.Parameter(torch.ones(()))  # something for the optimizer (lr 0: it never changes)
        self.calls = 0

    def forward(self, z):
        frame = self.frames[min(self.calls, len(self.frames) - 1)]
        self.calls += 1
        return (frame * self.gain).unsqueeze(0)


def scripted_history(n=120, collapse_at=70, seed=0):
    """A DIP run's arc: outputs approach the clean image (up to step 40), then fit the noise of the observation
    (PSNR against it keeps rising, against the clean image it falls), with one collapse (a black frame) that
    backtracking must catch; steps are far apart in PSNR, so float rounding cannot swap a choice."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(1, 3, 32, 32, generator=g)
    observed = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    frames = []
    for k in range(n):
        fit_noise = max(k - 40, 0) / (n - 40)  # 0 until step 40, then towards the observation
        amplitude = 0.02 + (0.3 * (40 - k) / 40 if k < 40 else 0.0005 * (k - 40))  # least at step 40
        frame = clean[0] + fit_noise * (observed[0] - clean[0]) + amplitude * torch.randn(clean.shape[1:], generator=g)
        frames.append(frame.clamp(0, 1))
    frames[collapse_at] = torch.zeros_like(frames[0])
    return clean, observed, torch.stack(frames)


def run_scripted(device: str) -> dict:
    clean, observed, frames = scripted_history()
    task = Denoising(
        net=ScriptedNet(frames),
        optimizer=functools.partial(torch.optim.SGD, lr=0.0),
        exp_weight=0.9,
        backtracking=True,
        backtrack_drop_db=3.0,
        seed=0,
    )
    task.prepare(ImageData(name="scripted", clean=clean, observed=observed))
    stoppers = [
        PSNRPatience(patience=30, stop=False),
        ESWMV(window=5, patience=30, stop=False),
        ESEMV(alpha=0.3, patience=30, warmup=5, stop=False),
        Discrepancy(sigma=0.1 * 255, smoothing=0.5, patience=30, stop=False),
        SelfValidation(holdout=0.2, patience=30, stop=False),
    ]
    stoppers[-1].attach(task)
    best = BestIterate()
    task.to(device)
    task.start_on_device()
    loop = task.by_hand(task.make_optimizer(), [best, *stoppers])  # the loop's iteration, in chunks of 16
    for start in range(0, len(frames), 16):
        hist = torch.full((1, min(16, len(frames) - start), len(HISTORY)), float("nan"), device=device)
        for i in range(hist.shape[1]):
            loop.run(hist, i)
        task.record_chunk(hist[0].cpu(), lambda: 0.0)
    return {
        "best": best.result(),
        "backtracks": int(task.n_backtracks),
        "stops": [s.stop_result(task)["stop_step"] for s in stoppers],
        "fired": [int(s.fired_at) for s in stoppers],
        "out_avg": task.out_avg.cpu(),
        "psnr_gt_avg": task.history["psnr_gt_avg"],
    }


def test_the_scripted_history_makes_each_decision_on_the_cpu():
    cpu = run_scripted("cpu")
    assert cpu["backtracks"] == 1  # the black frame, and nothing else
    assert 40 <= cpu["best"]["best_step"] < 70  # the averaged output peaks a little after the raw one (step 40)
    assert all(f >= 0 for f in cpu["fired"][:3])  # PSNR patience, ES-WMV and ES-EMV fired
    assert 35 <= cpu["stops"][1] <= 45  # ES-WMV: the raw outputs vary least around step 40
    # discrepancy and self-validation see a scripted net that fits held-out pixels too: only their CPU/CUDA
    # agreement is checked (next test)


@on_gpu
def test_on_device_decisions_are_the_same_on_cpu_and_cuda():
    cpu, cuda = run_scripted("cpu"), run_scripted("gpu")
    assert cpu["backtracks"] == cuda["backtracks"] == 1
    assert cpu["best"]["best_step"] == cuda["best"]["best_step"]
    assert cpu["best"]["psnr_best"] == pytest.approx(cuda["best"]["psnr_best"], abs=1e-3)
    assert cpu["stops"] == cuda["stops"] and cpu["fired"] == cuda["fired"]
    assert torch.allclose(cpu["out_avg"], cuda["out_avg"], atol=1e-5)  # the collapse left the average alone
    assert cpu["psnr_gt_avg"] == pytest.approx(cuda["psnr_gt_avg"], abs=1e-3)


class CorruptWeights(RunHook):
    """At the chunk end after iteration `at`: scale every weight by -40, a collapse backtracking must undo."""

    def __init__(self, at: int):
        self.at, self.done = at, False

    def on_chunk_end(self, run):
        task = run.task
        if task.iteration >= self.at and not self.done:
            self.done = True
            with torch.no_grad():
                for p in task.net.parameters():
                    p.mul_(-40.0)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param("gpu", marks=[pytest.mark.gpu, needs_cuda]),
        pytest.param("gpu cuda_graph=true", marks=[pytest.mark.gpu, needs_cuda]),
        # the notebooks' mode, its check pattern counted on the device, inside the captured graph
        pytest.param(
            "gpu cuda_graph=true task.backtrack_mode=reference task.backtrack_skip_every=100",
            marks=[pytest.mark.gpu, needs_cuda],
        ),
    ],
)
def test_a_forced_collapse_is_backtracked(run_dip, device):
    corrupt = ["+callbacks.corrupt._target_=test_gpu.CorruptWeights", "+callbacks.corrupt.at=100"]
    accelerator, *graph = device.split()
    base = [
        *TINY,
        "cpu_threads=1",
        "iterations=300",
        "chunk=20",
        "task.backtracking=true",
        "task.exp_weight=0",
        f"trainer.accelerator={accelerator}",
        *graph,
    ]
    clean_run, _ = run_dip(base)
    m, _ = run_dip([*base, *corrupt])
    assert m["backtracks"] >= 1 and clean_run["backtracks"] == 0
    assert m["psnr_final"] > m["psnr_observed"] + 1 and m["psnr_final"] > clean_run["psnr_final"] - 1.5


# ---------------------------------------------------------------------------------------- no host sync in a chunk
@on_gpu
def test_no_host_sync_inside_a_chunk(run_dip, monkeypatch):
    """torch raises on any synchronising CUDA call while a chunk's iterations run (after the first iteration,
    which creates the lazily built state), with averaging, backtracking, jitter, best iterate and the four
    GT-free stoppers on."""
    original = Iterations.run
    checked = []

    def strict(self, hist, i):
        if self.tasks[0].iteration == 0:
            return original(self, hist, i)
        torch.cuda.set_sync_debug_mode("error")
        try:
            live = original(self, hist, i)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        checked.append(self.tasks[0].iteration)
        return live

    monkeypatch.setattr(Iterations, "run", strict)
    m, _ = run_dip(
        [
            *[o for o in TINY if not o.startswith("callbacks=")],
            *GPU,
            "iterations=60",
            "chunk=20",
            "task.backtracking=true",
            "task.exp_weight=0.99",
            "task.reg_noise_std=0.03",
            "callbacks=es_wmv",
            "callbacks.early_stopping.window=5",
            "callbacks.early_stopping.stop=false",
            "+callbacks.emv._target_=dip_lightning.callbacks.early_stopping.ESEMV",
            "+callbacks.emv.warmup=10",
            "+callbacks.emv.stop=false",
            "+callbacks.dis._target_=dip_lightning.callbacks.discrepancy.Discrepancy",
            "+callbacks.dis.stop=false",
            "+callbacks.sv._target_=dip_lightning.callbacks.self_validation.SelfValidation",
            "+callbacks.sv.stop=false",
        ]
    )
    assert len(checked) == 59 and m["iterations"] == 60 and m["psnr_best"] is not None


@on_gpu
@pytest.mark.parametrize("compiled", [[], ["compile=default"]], ids=["eager net", "compiled net"])
def test_the_captured_iteration_gives_the_eager_result(run_dip, compiled):
    """cuda_graph=true replays the same kernels: the same choices and PSNRs, with averaging, backtracking, jitter,
    best iterate and a stopper on; with compile=default the capture holds the compiled net's kernels. Deterministic
    kernels in both: without them the best PSNR of two runs moved by 0.057 dB on an H200 (cuDNN picks its kernels
    per run), more than this test should allow a replay."""
    args = [
        *compiled,
        "trainer.deterministic=true",
        *[o for o in TINY if not o.startswith("callbacks=")],
        *GPU,
        "iterations=200",
        "chunk=20",
        "task.backtracking=true",
        "task.exp_weight=0.99",
        "callbacks=es_wmv",
        "callbacks.early_stopping.window=5",
        "callbacks.early_stopping.stop=false",
    ]
    eager, _ = run_dip(args)
    graphed, _ = run_dip([*args, "cuda_graph=true"])
    assert graphed["speed"].endswith("cuda_graph") and graphed["backtracks"] == eager["backtracks"]
    assert graphed["psnr_final"] == pytest.approx(eager["psnr_final"], abs=0.05)
    assert graphed["psnr_best"] == pytest.approx(eager["psnr_best"], abs=0.05)


@on_gpu
@pytest.mark.parametrize(
    "options",
    [
        ["precision=bf16", "channels_last=true"],
        ["precision=tf32"],
        ["precision=tf32", "channels_last=true", "cuda_graph=true"],
        ["precision=bf16", "channels_last=true", "compile=default", "cuda_graph=true"],
    ],
)
def test_speed_options_restore_on_cuda(run_dip, options):
    m, _ = run_dip([*TINY, *GPU, "iterations=300", "task.exp_weight=0", *options])
    assert m["speed"].startswith(options[0].split("=")[1])
    assert m["psnr_final"] > m["psnr_observed"] + 2


# ---------------------------------------------------------------------------------------------- resume on CUDA
@on_gpu
def test_sigterm_then_resume_on_cuda_matches_the_uninterrupted_run(run_dip, tmp_path):
    """With trainer.deterministic=true (the reference net's reflection padding and bilinear upsampling included:
    torch 2.11 has deterministic CUDA kernels for both), bit for bit."""
    from dip_lightning.checkpoint import Interrupted

    base = [*RESUME_BASE, *GPU, "trainer.deterministic=true", "iterations=60"]
    straight, straight_dir = run_dip(base, run_dir=tmp_path / "straight")
    with pytest.raises(Interrupted, match="SIGTERM"):
        run_dip(
            [*base, "+callbacks.kill._target_=test_resume.SignalAt", "+callbacks.kill.at=20"],
            run_dir=tmp_path / "killed",
        )
    resumed, resumed_dir = run_dip([*base, f"resume={tmp_path / 'killed'}"], run_dir=tmp_path / "resumed")
    assert straight["device"].startswith("cuda:")
    assert_same_run(straight_dir, resumed_dir, straight, resumed)


# ----------------------------------------------------------------------------------------------------- GPU lease
LEASED_JOB = """
import json, os, sys, time
from pathlib import Path
import torch
from omegaconf import OmegaConf
from dip_lightning.sweeps.gpu_lease import gpu_lease

lock_dir, jobs_per_gpu, hold, ready = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
together = int(sys.argv[5])  # how many jobs hold a lease at once (and wait for each other)
cfg = OmegaConf.create(
    {"enabled": True, "devices": [0], "lock_dir": lock_dir, "poll_seconds": 0.05, "jobs_per_gpu": jobs_per_gpu}
)
with gpu_lease(cfg):
    start = time.time()
    (Path(ready) / str(os.getpid())).touch()  # holding the lease
    deadline = time.monotonic() + 240
    while len(list(Path(ready).iterdir())) < together:
        assert time.monotonic() < deadline, "the other job did not get its lease"
        time.sleep(0.05)
    x = torch.randn(2048, 2048, device="cuda")
    for _ in range(300):
        x = torch.tanh(x @ x)
    torch.cuda.synchronize()
    time.sleep(hold)  # a job that holds its lease a while (start-up, outputs)
    end = time.time()
    print(json.dumps({"start": start, "end": end, "visible": os.environ["CUDA_VISIBLE_DEVICES"]}))
"""


@on_gpu
@pytest.mark.parametrize("jobs_per_gpu", [1, 2])
def test_two_jobs_leased_on_one_gpu_overlap_only_with_two_slots(tmp_path, jobs_per_gpu):
    # With two slots the two jobs wait for each other while holding their leases, so they overlap however slowly
    # the second one starts; with one slot each waits for no one (it could not: the other has no lease to take).
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    ready = tmp_path / "ready"
    ready.mkdir()
    job = [LEASED_JOB, str(tmp_path / "locks"), str(jobs_per_gpu), "1", str(ready), str(min(2, jobs_per_gpu))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", *job],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    spans = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        spans.append(json.loads(out.strip().splitlines()[-1]))
    a, b = sorted(spans, key=lambda s: s["start"])
    assert a["visible"] == b["visible"] == "0"
    if jobs_per_gpu == 1:
        assert a["end"] <= b["start"], spans  # the second job started its GPU work after the first one ended
    else:  # both ran at once, one per slot (each waited, holding its lease, until the other held one)
        assert b["start"] < a["end"], spans


@on_gpu
def test_packed_runs_on_cuda_follow_the_same_runs_one_by_one(tmp_path):
    """launcher=packed on a GPU: two runs through vmap (grouped convolutions) take the course the same runs take
    one by one (the same backtracks and iterations, PSNRs within the float noise test_packing.py measures), and a
    pack of one, which runs without vmap, too."""
    from conftest import compose_cfg
    from test_packing import BASE as PACK_BASE
    from test_packing import JOBS

    from dip_lightning.run.fit import train_runs
    from dip_lightning.run.job import run_prepared
    from dip_lightning.run.prepare import prepare_run

    jobs = [JOBS[0], [o.replace("at=100", "at=20") for o in JOBS[1]]]
    base = [*PACK_BASE, *GPU, "iterations=60"]
    alone = [run_prepared(prepare_run(compose_cfg([*base, *j]), tmp_path / f"alone{i}")) for i, j in enumerate(jobs)]
    for label, pack in (("two", jobs), ("one", jobs[:1])):
        runs = [prepare_run(compose_cfg([*base, *j]), tmp_path / f"{label}{i}") for i, j in enumerate(pack)]
        for a, p in zip(alone, train_runs(runs)):
            assert p.get("pack", 1) == len(pack)
            assert p["backtracks"] == a["backtracks"] and p["iterations"] == a["iterations"], (label, a, p)
            for key in ("psnr_final", "psnr_best"):
                assert p[key] == pytest.approx(a[key], abs=0.6), (label, key)
    assert alone[1]["backtracks"] >= 1


@on_gpu
def test_pack_auto_sizes_packs_from_a_runs_measured_peak(tmp_path):
    """On a GPU, pack=auto measures one iteration's peak of the largest run (the CPU estimates it): the measured
    figure is of the estimate's order, and the pack it gives fits the free memory."""
    from conftest import compose_cfg

    from dip_lightning.run.prepare import prepare_run
    from dip_lightning.sweeps.packed import AUTO_MEMORY_SHARE, measured_run_bytes, pack_size, run_bytes

    r = prepare_run(compose_cfg([*TINY, *GPU, "data.crop=128"]), tmp_path / "r")
    measured, estimated = measured_run_bytes(r), run_bytes(r)
    assert 0.2 * estimated < measured < 5 * estimated, (measured, estimated)
    size = pack_size("auto", [r] * 3)
    assert 1 <= size <= 3 and size * measured <= AUTO_MEMORY_SHARE * torch.cuda.mem_get_info()[0] or size == 1


@on_gpu
def test_an_ensemble_on_the_gpu_is_one_pack_with_every_speed_option(tmp_path):
    from conftest import compose_cfg

    from dip_lightning.run.job import run

    options = ["precision=tf32", "channels_last=true", "cuda_graph=true"]
    m = run(compose_cfg([*TINY, *GPU, *options, "iterations=300", "ensemble=4"]), tmp_path / "e")
    assert m["pack"] == 4 and m["speed"] == "tf32, channels_last, cuda_graph"
    assert m["psnr_ensemble"] > m["psnr_members_mean"] and m["psnr_ensemble"] > m["psnr_observed"]
