"""Packed runs (launcher=packed): K jobs trained as one batched model end as the same K jobs run one by one."""

import json
import tempfile

import pytest
import torch
from conftest import TINY, compose_cfg, dip_cli

from dip_lightning.callbacks.roles import IterationHook
from dip_lightning.checkpoint import CHECKPOINT
from dip_lightning.config.compose import build
from dip_lightning.errors import DIPError
from dip_lightning.loop.stacked import StackedNets
from dip_lightning.run.fit import train_runs as run_pack
from dip_lightning.run.folder import LOCK
from dip_lightning.run.job import run, run_prepared
from dip_lightning.run.packs import group_packs, pack_key
from dip_lightning.run.prepare import prepare_run
from dip_lightning.sweeps.packed import pack_size

BASE = [o for o in TINY if not o.startswith("callbacks=")] + [
    "cpu_threads=1",
    "chunk=20",
    "task.backtracking=true",
    "callbacks=es_wmv",
    "callbacks.early_stopping.window=5",
    "callbacks.early_stopping.patience=60",
]
COMPARED = ("psnr_final", "psnr_best", "best_step", "stop_step", "iterations", "backtracks")


class CorruptAt(IterationHook):
    """An iteration hook that wrecks the weights after step `at`: a collapse that backtracking must undo."""

    def __init__(self, at: int):
        self.at = at

    def on_dip_iteration(self, task, it):
        if it.step == self.at:
            for p in task.net.parameters():
                p.mul_(-40.0)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


JOBS = [  # seeds, learning rates, a monitoring stopper, a stopping stopper, a forced collapse
    ["seed=0", "optimizer.lr=0.01", "callbacks.early_stopping.stop=false"],
    [
        "seed=1",
        "task.noise_seed=1",
        "optimizer.lr=0.005",
        "+callbacks.corrupt._target_=test_packing.CorruptAt",
        "+callbacks.corrupt.at=100",
    ],
    ["seed=2", "task.noise_seed=2", "optimizer.lr=0.02", "task.exp_weight=0.9"],
]


def test_three_packed_jobs_end_as_the_same_jobs_run_one_by_one(tmp_path):
    """The CPU's pack path (each run's own module, one Adam step for all): the same metrics bit for bit."""
    base = [*BASE, "iterations=300"]
    alone = [run(compose_cfg([*base, *job]), tmp_path / f"alone{i}") for i, job in enumerate(JOBS)]
    runs = [prepare_run(compose_cfg([*base, *job]), tmp_path / f"packed{i}") for i, job in enumerate(JOBS)]
    assert group_packs(runs, 8) == [[0, 1, 2]]
    packed = run_pack(runs)
    assert alone[1]["backtracks"] >= 1 and alone[2]["iterations"] < 300  # the collapse, the early stop happened
    for a, p in zip(alone, packed):
        assert p["pack"] == 3
        for key in ("psnr_final", "psnr_best"):
            assert p[key] == pytest.approx(a[key], abs=0.05), key
        assert all(p[k] == a[k] for k in ("best_step", "stop_step", "iterations", "backtracks")), (a, p)
    for i in range(3):  # the same files as an unpacked job
        names = {f.name for f in (tmp_path / f"alone{i}").iterdir()} - {LOCK}  # run() locks its folder
        assert names == {f.name for f in (tmp_path / f"packed{i}").iterdir()} - {LOCK}


def test_the_vmap_pack_path_follows_the_same_jobs_within_float_noise(tmp_path):
    """The GPU's pack path (vmap: grouped convolutions), here on the CPU. Its convolutions round differently from
    separate ones (1e-7), and DIP with Adam grows that fast: Adam's first steps move each weight by about lr
    whatever its gradient's size, so a near-zero gradient's sign is noise. Measured here: scaling the initial
    weights by 1 + 1e-7 noise on the exact path moved psnr_best at step 39 by 0.42 dB; two unpacked runs of one
    config on a GPU differ as much (cuDNN is not deterministic). So: the first iteration (same images, z and
    weights per run) agrees to float rounding, the runs' courses agree (backtracks, iterations), and the results
    within that noise; the step itself is the exact path's (test above), and the gradients match (test below)."""
    jobs = [[*JOBS[0]], [o.replace("at=100", "at=20") for o in JOBS[1]], [*JOBS[2]]]
    base = [*BASE, "iterations=40"]
    alone = [prepare_run(compose_cfg([*base, *job]), tmp_path / f"alone{i}") for i, job in enumerate(jobs)]
    alone_metrics = [run_prepared(r) for r in alone]
    packed = [prepare_run(compose_cfg([*base, *job]), tmp_path / f"packed{i}") for i, job in enumerate(jobs)]
    packed_metrics = run_pack(packed, batched=True)
    assert alone_metrics[1]["backtracks"] >= 1
    for a, p, ra, rp in zip(alone_metrics, packed_metrics, alone, packed):
        assert rp.task.history["loss"][0] == pytest.approx(ra.task.history["loss"][0], rel=1e-5)
        assert p["backtracks"] == a["backtracks"] and p["iterations"] == a["iterations"]
        for key in ("psnr_final", "psnr_best"):
            assert p[key] == pytest.approx(a[key], abs=0.6), key


def test_a_packed_run_resumes_to_its_uninterrupted_result(tmp_path):
    """Stopped at iteration 40 with its checkpoints (the unpacked format), resumed packed to 80: the same as a pack
    that ran 80 straight, bit for bit; and one of its checkpoints resumes unpacked too."""
    jobs = JOBS[:2]
    straight = run_pack(
        [prepare_run(compose_cfg([*BASE, "iterations=80", *j]), tmp_path / f"s{i}") for i, j in enumerate(jobs)]
    )
    run_pack(
        [
            prepare_run(compose_cfg([*BASE, "iterations=40", "checkpoint_every=40", *j]), tmp_path / f"r{i}")
            for i, j in enumerate(jobs)
        ]
    )
    assert torch.load(tmp_path / "r0" / CHECKPOINT, weights_only=True)["iteration"] == 40
    resumed = run_pack(
        [
            prepare_run(compose_cfg([*BASE, "iterations=80", f"resume={tmp_path / f'r{i}'}", *j]), tmp_path / f"p{i}")
            for i, j in enumerate(jobs)
        ]
    )
    for a, b in zip(straight, resumed):
        assert all(a[k] == b[k] for k in COMPARED), (a, b)
    assert (tmp_path / "s0" / "curves.csv").read_bytes() == (tmp_path / "p0" / "curves.csv").read_bytes()
    unpacked = run(compose_cfg([*BASE, "iterations=80", f"resume={tmp_path / 'r0'}", *jobs[0]]), tmp_path / "u0")
    assert unpacked["psnr_final"] == pytest.approx(straight[0]["psnr_final"], abs=1e-4)


def test_packs_take_only_jobs_that_can_share_one(tmp_path):
    def prepared(*overrides):
        return prepare_run(compose_cfg([*BASE, "iterations=5", *overrides]), tempfile.mkdtemp(dir=tmp_path))

    runs = [
        prepared("seed=0"),
        prepared("seed=1", "optimizer.lr=0.02"),
        prepared("data.crop=96"),
        prepared("optimizer=sgd"),
        prepared("seed=2", "task.reg_noise_std=0.05"),
        prepared("channels_last=true"),
        prepared("channels_last=true", "seed=3"),
    ]
    assert pack_key(runs[3]) is None  # SGD: runs unpacked
    # speed options pack, with runs of the same options only
    assert group_packs(runs, 2) == [[0, 1], [4], [2], [5, 6], [3]]


def test_pack_size_auto_fits_memory_and_bad_values_are_refused(tmp_path):
    r = prepare_run(compose_cfg([*BASE, "iterations=5"]), tmp_path / "r")
    assert 1 <= pack_size("auto", [r, r, r]) <= 3
    with pytest.raises(DIPError, match="hydra.launcher.pack=0 is not valid"):
        pack_size(0, [r])


def test_stacked_adam_is_torch_adam_bit_for_bit():
    cfg = compose_cfg(TINY)
    nets, ref = [], []
    for seed in range(2):
        for group in (nets, ref):
            torch.manual_seed(seed)
            group.append(build(cfg.net, output_channels=3))
    opts = [torch.optim.Adam(n.parameters(), lr=lr) for n, lr in zip(ref, (0.01, 0.003))]
    stacked = StackedNets(nets, [0.01, 0.003], batched=False)
    z, y = torch.rand(2, 1, 32, 64, 64), torch.rand(2, 1, 3, 64, 64)
    for _ in range(5):
        for k, (n, o) in enumerate(zip(ref, opts)):
            o.zero_grad()
            ((n(z[k]) - y[k]) ** 2).mean().backward()
            o.step()
        stacked.zero_grad()
        ((stacked.forward(z) - y) ** 2).mean(dim=(1, 2, 3, 4)).sum().backward()
        stacked.adam_step()
    for k in range(2):
        assert all(torch.equal(p, q) for p, q in zip(ref[k].parameters(), nets[k].parameters()))
    stacked.zero_grad()  # vmap: the same outputs and gradients within float rounding
    ((stacked.forward(z) - y) ** 2).mean(dim=(1, 2, 3, 4)).sum().backward()
    batched = StackedNets(nets, [0.01, 0.003], batched=True)
    out = batched.forward(z)
    ((out - y) ** 2).mean(dim=(1, 2, 3, 4)).sum().backward()
    assert torch.allclose(out, stacked.forward(z), atol=1e-5)
    assert torch.allclose(batched.gradient(), stacked.gradient(), rtol=1e-4, atol=1e-7)


def test_a_packed_sweep_gathers_into_the_table_of_the_same_sweep_run_one_by_one(tmp_path):
    args = [*TINY, "cpu_threads=1", "iterations=60", "seed=0,1,2,3", "optimizer.lr=0.01,0.005"]
    tables = {}
    launchers = {
        "local": ["launcher=local"],
        "packed": ["launcher=packed"],  # and 2 packs of 4 at a time:
        "parallel": ["launcher=packed", "hydra.launcher.pack=4", "hydra.launcher.n_parallel=2"],
    }
    for launcher, choice in launchers.items():
        sweep = tmp_path / launcher
        proc = dip_cli(["-m", *choice, *args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        from dip_lightning.sweeps.gather import gather

        rows, _ = gather(sweep)
        tables[launcher] = {(r["setting"], str(r["seed"])): r for r in rows}
        assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    for launcher in ("packed", "parallel"):
        assert tables["local"].keys() == tables[launcher].keys()
        for key, a in tables["local"].items():
            b = tables[launcher][key]
            assert b["psnr_best"] == pytest.approx(a["psnr_best"], abs=0.05)
            assert b["psnr_final"] == pytest.approx(a["psnr_final"], abs=0.05)
    metrics = json.loads((tmp_path / "packed" / "0" / "metrics.json").read_text())
    assert metrics["pack"] == 8 and (tmp_path / "packed" / "0" / ".hydra" / "overrides.yaml").exists()
    assert json.loads((tmp_path / "parallel" / "7" / "metrics.json").read_text())["pack"] == 4


def test_seeds_restore_one_simulated_observation_and_noise_seed_draws_another(tmp_path):
    """A seed changes the net, z and the jitter, not the observation: runs of an ensemble restore one input."""

    def observed(*overrides):
        r = prepare_run(compose_cfg([*BASE, "iterations=5", *overrides]), tempfile.mkdtemp(dir=tmp_path))
        return r.task.observed, r.task.z

    y0, z0 = observed("seed=0")
    y1, z1 = observed("seed=1")
    y2, _ = observed("seed=1", "task.noise_seed=1")
    assert torch.equal(y0, y1) and not torch.equal(z0, z1)
    assert not torch.equal(y1, y2)


def test_a_pack_logs_each_run_live_and_a_gt_free_rule_chooses_as_in_the_unpacked_run(tmp_path):
    """Progress, snapshots and curves per run in a pack (logger=csv), and the discrepancy rule choosing in each run
    the step it chooses in the same run unpacked."""
    base = [
        *[o for o in BASE if not o.startswith("callbacks")],
        "iterations=200",
        "callbacks=discrepancy",
        "callbacks.early_stopping.patience=20",
        "logger=csv",
    ]
    jobs = [["seed=0", "optimizer.lr=0.01"], ["seed=1", "optimizer.lr=0.03"]]
    alone = [run(compose_cfg([*base, *j]), tmp_path / f"alone{i}") for i, j in enumerate(jobs)]
    packed = run_pack([prepare_run(compose_cfg([*base, *j]), tmp_path / f"packed{i}") for i, j in enumerate(jobs)])
    for i, (a, p) in enumerate(zip(alone, packed)):
        assert all(p[k] == a[k] for k in ("stop_step", "stop_iteration", "iterations")), (a, p)
        assert p["psnr_stop"] == pytest.approx(a["psnr_stop"], abs=1e-4)
        alone_csv = (tmp_path / f"alone{i}" / "csv" / "metrics.csv").read_text().splitlines()
        packed_csv = (tmp_path / f"packed{i}" / "csv" / "metrics.csv").read_text().splitlines()
        assert len(packed_csv) == len(alone_csv) > 10  # the same curve rows, logged while the pack ran


def test_a_cpu_pack_on_two_threads_computes_what_it_computes_on_one(tmp_path):
    """cpu_threads=2: the pack's runs go forward and backward on two threads of one intra-op thread each; every
    run computes what it computes alone on one thread, so the pack's results are the one-thread pack's, bit for
    bit, and torch's thread count is given back after the loop."""
    base = [*BASE, "iterations=60"]
    results = {}
    for threads in (1, 2):
        runs = [
            prepare_run(compose_cfg([*base, *job, f"cpu_threads={threads}"]), tmp_path / f"t{threads}_{i}")
            for i, job in enumerate(JOBS)
        ]
        results[threads] = run_pack(runs)
        assert torch.get_num_threads() == threads
    for one, two in zip(results[1], results[2]):
        assert all(one[k] == two[k] for k in COMPARED), (one, two)
    for i in range(len(JOBS)):
        assert (tmp_path / f"t1_{i}" / "restored.png").read_bytes() == (
            tmp_path / f"t2_{i}" / "restored.png"
        ).read_bytes()
