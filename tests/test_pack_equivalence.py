"""A pack computes what its runs compute one by one, for every net in conf/net/ and every stopping rule in
conf/callbacks/, and a pack's runs log their progress and image snapshots as runs on their own do."""

import logging
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg, save_png
from omegaconf import OmegaConf

from dip_lightning.config.compose import CONFIG_DIR
from dip_lightning.run.fit import train_runs
from dip_lightning.run.job import run
from dip_lightning.run.packs import group_packs
from dip_lightning.run.prepare import prepare_run

EXACT = ("psnr_final", "psnr_best", "best_step", "iterations", "backtracks")
NETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "net").glob("*.yaml"))


def _gt_free(node) -> bool:
    return node is not None and not hydra.utils.instantiate(node).uses_ground_truth


RULES = sorted(
    p.stem for p in (Path(CONFIG_DIR) / "callbacks").glob("*.yaml") if _gt_free(OmegaConf.load(p).get("early_stopping"))
)
SHORTER = {"es_wmv": ["window=10"], "es_emv": ["warmup=20"]}  # the rules' windows, to fit 300 iterations
JOBS = [["seed=0", "optimizer.lr=0.01"], ["seed=1", "optimizer.lr=0.02", "task.exp_weight=0.9"]]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def alone_and_packed(tmp_path, base: list[str]) -> list[tuple[dict, dict, Path, Path]]:
    """JOBS with `base`, one by one and as one pack: (alone, packed) metrics and folders per job."""
    alone = [run(compose_cfg([*base, *job]), tmp_path / f"alone{i}") for i, job in enumerate(JOBS)]
    runs = [prepare_run(compose_cfg([*base, *job]), tmp_path / f"packed{i}") for i, job in enumerate(JOBS)]
    assert group_packs(runs, 8) == [[0, 1]]  # they do pack
    packed = train_runs(runs)
    return [(a, p, tmp_path / f"alone{i}", tmp_path / f"packed{i}") for i, (a, p) in enumerate(zip(alone, packed))]


@pytest.mark.parametrize("net", NETS)
def test_every_net_packs_to_its_runs_one_by_one(tmp_path, net):
    base = ["data.crop=64", "logger=none", "callbacks=none", "chunk=10", "cpu_threads=1", f"net={net}"]
    base += ["iterations=12", "task.backtracking=true"]
    for a, p, a_dir, p_dir in alone_and_packed(tmp_path, base):
        assert p["pack"] == 2 and all(a[k] == p[k] for k in EXACT), (net, a, p)
        assert (a_dir / "restored.png").read_bytes() == (p_dir / "restored.png").read_bytes()


@pytest.fixture(scope="module")
def noisy_png(tmp_path_factory):
    import skimage.data

    clean = skimage.data.astronaut()[160:224, 180:244].astype(np.float64)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 10, clean.shape), 0, 255).astype(np.uint8)
    return save_png(tmp_path_factory.mktemp("obs") / "noisy.png", noisy)


@pytest.mark.parametrize("rule", RULES)
def test_every_gt_free_rule_stops_a_packed_run_where_it_stops_it_alone(tmp_path, rule, noisy_png):
    """Without ground truth: each run's rule (its own window, patience and estimate) chooses the iterate it
    chooses on its own, and the pack goes on with the run whose rule has not fired yet."""
    base = [o for o in TINY if not o.startswith("callbacks=")]
    base += ["cpu_threads=1", "chunk=10", "data.image=null", f"data.observed={noisy_png}", "iterations=300"]
    base += [f"callbacks={rule}", "callbacks.early_stopping.patience=20"]
    base += [f"callbacks.early_stopping.{o}" for o in SHORTER.get(rule, [])]
    results = alone_and_packed(tmp_path, base)
    if rule != "self_validation":  # its held-out pixels still improve at 300 iterations of this net
        assert any(a["stop_reason"] != "max_iterations" for a, *_ in results), results  # the rule did fire
    for a, p, a_dir, p_dir in results:
        assert p["stop_rule"] == a["stop_rule"]
        same = ("stop_step", "stop_iteration", "stop_reason", "iterations")
        assert all(a[k] == p[k] for k in same), (rule, a, p)
        assert (a_dir / "restored.png").read_bytes() == (p_dir / "restored.png").read_bytes()


def test_a_packs_runs_log_progress_and_snapshots_as_runs_alone(tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base = [*TINY[:3], "data.crop=64", "chunk=20", "cpu_threads=1", "iterations=60", "logger=tensorboard"]
    base += ["callbacks=default", "callbacks.snapshots.every_n_iterations=20", "callbacks.progress.log_seconds=0"]
    with caplog.at_level(logging.INFO, logger="dip_lightning"):
        results = alone_and_packed(tmp_path, base)

    def images(folder: Path) -> dict[str, int]:
        (events,) = {f.parent for f in (folder / "tensorboard").rglob("events.out.tfevents.*")}
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        return {tag: len(acc.Images(tag)) for tag in acc.Tags()["images"]}

    for _, _, a_dir, p_dir in results:
        alone, packed = images(a_dir), images(p_dir)
        assert packed == alone and any(t.startswith("snapshots") for t in packed), (alone, packed)
        # progress: the pack's lines name each run's folder, up to its last iteration
        assert any(r.getMessage().startswith(f"{p_dir.name}: 60/60") for r in caplog.records), p_dir.name
