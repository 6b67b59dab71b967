"""Results a researcher can paste and trust: one name per meaning across a run's outputs, and dip-gather's tables
(the result first, the oracle labelled, image names, no empty columns, the image x setting table, the plot of what
the tables report). No DIP run: job folders are written by hand, as in tests/test_sweeps.py."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dip_lightning import history as h
from dip_lightning.run_metrics import KEYS


# ------------------------------------------------------------------------------------- one name, one meaning
def test_no_history_column_is_a_metrics_json_key():
    """W&B shows a curve and a summary value of one name as one thing: `psnr_observed` was both the fit to the
    observation (the curve) and the corrupted input's PSNR (metrics.json), so the run's summary showed the input's
    PSNR as the curve's last value."""
    assert h.PSNR_FIT == "psnr_fit" and "psnr_observed" in KEYS
    assert not set(h.COLUMNS) & set(KEYS), set(h.COLUMNS) & set(KEYS)
    assert not hasattr(h, "PSNR_OBSERVED")  # a reader of the old constant fails where it reads it


def write_old_curves(path: Path, values, gt: bool = True) -> None:
    """curves.csv as runs wrote it before the history's fit column was renamed (psnr_observed)."""
    rows = ["iteration,loss,psnr_observed,psnr_gt,psnr_gt_avg"]
    rows += [f"{i},0.1,{20 + i},{v if gt else 'nan'},{v if gt else 'nan'}" for i, v in enumerate(values)]
    path.write_text("\n".join(rows) + "\n")


def test_an_old_curves_csv_is_read_under_the_new_names(tmp_path):
    write_old_curves(tmp_path / "curves.csv", [20.0, 21.0])
    curves = h.read_curves(tmp_path / "curves.csv")
    assert list(curves) == ["iteration", "loss", "psnr_fit", "psnr_gt", "psnr_gt_avg"]
    assert curves[h.PSNR_FIT] == [20.0, 21.0]
    # a history that already has the new name keeps it (an old name beside it is not renamed over it)
    both = h.upgrade({"psnr_fit": [1.0], "psnr_observed": [2.0]})
    assert both == {"psnr_fit": [1.0], "psnr_observed": [2.0]}
    (tmp_path / "foreign.csv").write_text("iteration,loss\n0,1\n")
    from dip_lightning.errors import DIPError

    with pytest.raises(DIPError, match="lacks the history columns"):
        h.read_curves(tmp_path / "foreign.csv")


def test_the_final_scalars_end_the_curves_at_the_last_step(tmp_path):
    """CSV and TensorBoard get metrics.json's numbers as final/<key> at the run's last iteration (the step of its
    last curve row), not at a step of their own."""
    from pytorch_lightning.loggers import CSVLogger

    from dip_lightning.history import log_history
    from dip_lightning.run.loggers import set_summary

    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    history = {h.ITERATION: [0, 1, 2], **{k: [1.0, 2.0, 3.0] for k in h.COLUMNS}}
    log_history([logger], history, log_every=1)
    set_summary([logger], {"psnr_best": 30.0, "psnr_observed": 20.0, "stop_reason": "x"}, step=2)
    logger.finalize("success")
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    (final,) = [r for r in rows if r.get("final/psnr_best")]
    assert final["step"] == "2" and float(final["final/psnr_observed"]) == 20.0
    assert "psnr_observed" not in rows[0] and {"psnr_fit", "final/psnr_observed"} <= set(rows[0])
    with pytest.raises(TypeError):
        set_summary([logger], {"psnr_best": 30.0})  # the step is not optional: a default put it at step 0


def test_the_final_panel_says_which_image_is_the_result_and_which_the_oracle(tmp_path):
    from dip_lightning.data.io import write_image
    from dip_lightning.run.loggers import log_final_panel

    class WandbLogger:  # log_images dispatches on the class name; this one records what it is given
        logged: list = []

        def log_image(self, key, images, caption, step):
            self.logged.append((key, caption, step))

    import torch

    for name in ("observed", "restored", "best"):
        write_image(tmp_path / f"{name}.png", torch.full((3, 8, 8), 0.5))
    (tmp_path / "metrics.json").write_text(json.dumps({"best_step": 7, "stop_step": 9, "stop_reason": "discrepancy"}))
    log_final_panel([WandbLogger()], tmp_path, step=12)
    ((key, captions, step),) = WandbLogger.logged
    assert key == "final" and step == 12
    assert captions == [
        "observed",
        "restored @ 9 (the result: discrepancy)",
        "best @ 7 (oracle: chosen with the ground truth)",
    ]


# ------------------------------------------------------------------------------------- what a sweeper optimises
STOPPED = {"psnr_final": 27.0, "psnr_best": 29.0, "psnr_stop": 28.0, "stop_step": 90, "stop_reason": "discrepancy"}
FIXED = {"psnr_final": 27.0, "psnr_best": 29.0}
ENSEMBLE = {"ensemble": 2, "psnr_ensemble": 28.5, "psnr_ensemble_best": 29.5, "psnr_members_mean": 28.0}


def test_sweepers_optimise_the_result_not_the_oracle_by_default():
    """The default target was psnr_best, the best iterate chosen with the ground truth: an Optuna search tuned for
    an iterate that no run without ground truth returns. It is now the PSNR of what the run returned."""
    from omegaconf import OmegaConf

    from dip_lightning.config.compose import CONFIG_DIR
    from dip_lightning.run.packs import optimized_value
    from dip_lightning.run_metrics import result_kind, result_psnr

    train = yaml.safe_load((Path(CONFIG_DIR) / "train.yaml").read_text())
    optuna = yaml.safe_load((Path(CONFIG_DIR) / "hparams_search" / "dip_optuna.yaml").read_text())
    assert train["optimized_metric"] == optuna["optimized_metric"] == "psnr_result"
    cfg = OmegaConf.create({"optimized_metric": "psnr_result"})
    assert [result_kind(m) for m in (STOPPED, FIXED, ENSEMBLE)] == ["stop", "final", "ensemble"]
    assert [optimized_value(cfg, m) for m in (STOPPED, FIXED, ENSEMBLE)] == [28.0, 27.0, 28.5]
    assert optimized_value(OmegaConf.create({}), STOPPED) == 28.0  # no optimized_metric: the same default
    assert optimized_value(cfg, {**FIXED, "psnr_result": 26.0}) == 26.0  # a run that writes its own: that
    oracle = OmegaConf.create({"optimized_metric": "psnr_best"})
    assert optimized_value(oracle, STOPPED) == 29.0  # asked for by name, the oracle still
    assert optimized_value(oracle, ENSEMBLE) == 28.5  # a job without the key: its result's
    assert np.isnan(optimized_value(cfg, {"psnr_final": None, "psnr_best": None}))  # no ground truth
    assert np.isnan(optimized_value(cfg, RuntimeError("failed")))
    assert result_psnr({"psnr_final": None, "psnr_stop": None, "stop_step": 3}) is None


def test_a_result_is_named_oracle_when_its_rule_uses_the_ground_truth_whatever_its_class():
    from dip_lightning.sweeps.gather import result_of

    base = {"psnr_final": 20.0, "psnr_stop": 25.0, "stop_step": 3}
    mine = result_of({**base, "stop_rule": "MyOwnRule", "stop_uses_ground_truth": True})
    assert mine["result"] == "stop: MyOwnRule (oracle)" and mine["psnr_result"] == 25.0
    assert result_of({**base, "stop_rule": "Discrepancy", "stop_uses_ground_truth": False})["result"] == (
        "stop: Discrepancy"
    )


def test_a_metric_named_in_metrics_reaches_gathers_tables(tmp_path):
    from dip_lightning.sweeps.gather import gather

    sweep = tmp_path / "sweep"
    scores = {"psnr_observed": 20.0, "psnr_final": 25.0, "psnr_best": 26.0, "best_step": 9, "image": "a.png"}
    for num, (lr, mae) in enumerate([("0.01", 0.05), ("0.02", 0.07)]):
        job(sweep, num, [f"optimizer.lr={lr}", "data.image=a.png"], {**scores, "mae_final": mae, "mae_best": 0.04})
    rows, summary = gather(sweep)
    assert [r["mae_result"] for r in rows] == [0.05, 0.07]  # the final result's score: no stopping rule
    header = (sweep / "results.csv").read_text().splitlines()[0].split(",")
    assert {"mae_result", "mae_final", "mae_best (oracle)"} <= set(header)
    assert [s["mae_result_mean"] for s in summary] == [0.05, 0.07]
    assert "mae_result" in (sweep / "results.md").read_text()


# ---------------------------------------------------------------------------------------------- dip-gather
def job(sweep: Path, num: int, overrides: list[str], metrics: dict | None = None, curves: dict | None = None) -> Path:
    """A job folder as a sweep leaves it: .hydra/overrides.yaml, metrics.json, curves.csv ({column: values})."""
    folder = sweep / str(num)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if curves is not None:
        keys = list(curves)
        lines = [",".join(keys), *(",".join(str(v) for v in row) for row in zip(*curves.values()))]
        (folder / "curves.csv").write_text("\n".join(lines) + "\n")
    return folder


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def metrics_of(image: str, seed: int = 0, **values) -> dict:
    return {"image": image, "seed": seed, "psnr_observed": 20.0, "iterations": 100, "seconds": 1.0, **values}


def stopped(image: str, stop: float, best: float, seed: int = 0, rule: str = "Discrepancy") -> dict:
    return metrics_of(
        image,
        seed,
        psnr_final=stop - 1,
        psnr_stop=stop,
        stop_step=50,
        stop_reason="discrepancy",
        stop_rule=rule,
        stop_uses_ground_truth=rule == "PSNRPatience",  # as the run records its rule's uses_ground_truth
        psnr_best=best,
        best_step=40,
    )


def test_the_tables_lead_with_the_result_and_label_the_oracle(tmp_path):
    """psnr_best, the best iterate chosen with the ground truth, was the first metric column, unlabelled, and the
    only PSNR besides psnr_final in the summary: a reader took the oracle for what the method returns."""
    from dip_lightning.sweeps.gather import gather

    sweep = tmp_path / "sweep"
    job(sweep, 0, ["data.image=/d/a.png", "callbacks=discrepancy"], stopped("/d/a.png", 28.0, 30.0))
    job(
        sweep,
        1,
        ["data.image=/d/a.png", "callbacks=psnr_patience"],
        stopped("/d/a.png", 29.0, 30.0, rule="PSNRPatience"),
    )
    job(sweep, 2, ["data.image=/d/a.png", "callbacks=none"], metrics_of("/d/a.png", psnr_final=27.0, psnr_best=30.0))
    ensemble = metrics_of("/d/a.png", ensemble=2, psnr_ensemble=28.5, psnr_members_mean=28.0, psnr_ensemble_best=31.0)
    job(sweep, 3, ["data.image=/d/a.png", "ensemble=2"], ensemble)
    rows, summary = gather(sweep)
    assert [r["result"] for r in rows] == ["stop: Discrepancy", "stop: PSNRPatience (oracle)", "final", "ensemble"]
    assert [r["psnr_result"] for r in rows] == [28.0, 29.0, 27.0, 28.5]
    assert rows[0]["psnr_best"] == 30.0  # the rows keep metrics.json's names; the files carry the labels
    header, written = read_csv(sweep / "results.csv")
    assert header[:8] == ["job", "status", "setting", "image", "image_path", "seed", "result", "psnr_result"]
    oracle = {"psnr_best (oracle)", "best_step (oracle)", "psnr_ensemble_best (oracle)"}
    assert oracle <= set(header) and not {"psnr_best", "best_step", "psnr_ensemble_best"} & set(header)
    assert header.index("psnr_result") < header.index("psnr_final") < header.index("psnr_best (oracle)")
    assert written[3]["psnr_ensemble_best (oracle)"] == "31.0"
    md = (sweep / "results.md").read_text()
    jobs_header, setting_header = [
        line for line in md.splitlines() if line.startswith("| job") or line.startswith("| #")
    ]
    assert "| result | psnr_result |" in jobs_header and "| psnr_best (oracle) |" in jobs_header
    assert "| psnr_result |" in setting_header and "| psnr_best (oracle) |" in setting_header
    assert " psnr_best |" not in md and "(oracle) were chosen with the ground truth" in md
    assert summary[0]["psnr_result_mean"] == 28.0 and summary[0]["psnr_best_mean"] == 30.0
    header, _ = read_csv(sweep / "summary.csv")
    assert header[4:6] == ["psnr_result_mean", "psnr_result_std"] and "psnr_best_mean (oracle)" in header
    assert "psnr_best_mean" not in header


def test_images_are_named_and_columns_empty_everywhere_left_out(tmp_path):
    """The image column held absolute paths, and a sweep without a stopping rule carried its empty columns."""
    from dip_lightning.sweeps.gather import gather, image_names

    sweep = tmp_path / "sweep"
    for num, (image, lr) in enumerate(
        [("/data/set/a.png", "0.01"), ("/data/set/b.png", "0.01"), ("/data/set/a.png", "0.1")]
    ):
        job(sweep, num, [f"data.image='{image}'", f"optimizer.lr={lr}"], metrics_of(image, psnr_final=27.0 + num))
    job(sweep, 3, ["data.image='/data/set/b.png'", "optimizer.lr=0.1"])  # still running: its image from the config
    rows, _ = gather(sweep)
    assert [r["image"] for r in rows] == ["a", "b", "a", "b"]
    assert [r["image_path"] for r in rows] == [
        "/data/set/a.png",
        "/data/set/b.png",
        "/data/set/a.png",
        "/data/set/b.png",
    ]
    header, written = read_csv(sweep / "results.csv")
    assert [r["image"] for r in written] == ["a", "b", "a", "b"] and written[0]["image_path"] == "/data/set/a.png"
    empty = {"psnr_stop", "stop_step", "stop_reason", "ssim_final", "ssim_stop", "psnr_ensemble", "ssim_result"}
    assert not empty & set(header) and "psnr_final" in header and "error" in header
    md = (sweep / "results.md").read_text()
    assert "/data/set" not in md and "psnr_stop" not in md and "| a |" in md
    header, _ = read_csv(sweep / "summary.csv")
    assert not [c for c in header if c.startswith(("psnr_stop", "ssim", "psnr_ensemble", "psnr_best"))]
    # two images of one stem, or of one name in two folders: the shortest name that tells them apart
    assert image_names(["/x/a.png", "/x/a.jpg", "/x/b.png"]) == {
        "/x/a.png": "a.png",
        "/x/a.jpg": "a.jpg",
        "/x/b.png": "b",
        "": "",
    }
    assert image_names(["/x/set5/baby.png", "/x/set14/baby.png", "astronaut"]) == {
        "/x/set5/baby.png": "set5/baby.png",
        "/x/set14/baby.png": "set14/baby.png",
        "astronaut": "astronaut",
        "": "",
    }


def seed_job(sweep: Path, num: int, seed: int, image: str, lr: str) -> None:
    """A finished job of a seed sweep with restored.png and ground_truth.png (what an ensemble reads)."""
    import torch

    from dip_lightning.data.io import write_image

    folder = job(sweep, num, [f"data.image={image}", f"optimizer.lr={lr}", f"seed={seed}"])
    metrics = metrics_of(image, seed, psnr_final=25.0, psnr_best=26.0, psnr_convention="rgb", observation_sha256="ab")
    truth = torch.full((3, 8, 8), 0.5)
    write_image(folder / "ground_truth.png", truth)
    noise = 0.1 * torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(num))
    write_image(folder / "restored.png", (truth + noise).clamp(0, 1))
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_seed_ensembles_are_saved_under_their_image_name(tmp_path):
    """They were ensembles/0.png, ensembles/1.png: which image, which setting?"""
    from dip_lightning.sweeps.gather import ensembles, gather

    one = tmp_path / "one"
    for num, (seed, image) in enumerate(
        [(0, "/d/kodim01.png"), (1, "/d/kodim01.png"), (0, "/d/F16.png"), (1, "/d/F16.png")]
    ):
        seed_job(one, num, seed, image, "0.01")
    rows, _ = gather(one)
    assert [r["file"] for r in ensembles(one, rows)] == ["ensembles/kodim01.png", "ensembles/F16.png"]
    assert (one / "ensembles" / "kodim01.png").is_file() and (one / "ensembles" / "F16.png").is_file()
    several = tmp_path / "several"
    for num, (seed, lr) in enumerate([(0, "0.01"), (1, "0.01"), (0, "0.1"), (1, "0.1")]):
        seed_job(several, num, seed, "/d/kodim01.png", lr)
    rows, summary = gather(several)
    out = ensembles(several, rows)
    # k: the setting's number in results.md's per-setting table
    assert [(r["setting"], r["file"]) for r in out] == [
        ("optimizer.lr=0.01", "ensembles/kodim01-1.png"),
        ("optimizer.lr=0.1", "ensembles/kodim01-2.png"),
    ]
    assert "| 2 | optimizer.lr=0.1 |" in (several / "results.md").read_text()
    _, written = read_csv(several / "ensembles.csv")
    assert [r["image"] for r in written] == ["kodim01", "kodim01"]
    rows, _ = gather(one)
    ensembles(one, rows, image="restored")
    assert "psnr_ensemble (oracle)" not in (one / "ensembles.md").read_text()
    for folder in one.iterdir():
        if folder.is_dir() and folder.name.isdigit():
            (folder / "best.png").write_bytes((folder / "restored.png").read_bytes())
    ensembles(one, rows, image="best")
    assert "psnr_ensemble (oracle)" in (one / "ensembles.md").read_text()
    assert "psnr_ensemble (oracle)" in read_csv(one / "ensembles.csv")[0]


def test_an_image_by_setting_table_in_csv_markdown_and_latex(tmp_path):
    from dip_lightning.sweeps.gather import gather

    sweep = tmp_path / "sweep"
    results = {  # (image, reg_noise_std, seed): psnr_stop; b at 0.05 failed
        ("a", "0.0", 0): 28.0,
        ("a", "0.0", 1): 29.0,
        ("b", "0.0", 0): 30.0,
        ("a", "0.05", 0): 30.0,
    }
    for num, ((image, std, seed), value) in enumerate(results.items()):
        path = f"/photos/{image}.png"
        job(
            sweep,
            num,
            [f"data.image={path}", f"task.reg_noise_std={std}", f"seed={seed}"],
            stopped(path, value, 35.0, seed),
        )
    job(sweep, 9, ["data.image=/photos/b.png", "task.reg_noise_std=0.05", "seed=0"])  # no metrics.json
    gather(sweep)
    header, table = read_csv(sweep / "table.csv")
    assert header == ["image", "task.reg_noise_std=0.0", "task.reg_noise_std=0.05"]
    assert [r["image"] for r in table] == ["a", "b", "mean", "n"]
    assert float(table[0]["task.reg_noise_std=0.0"]) == 28.5  # the mean over the seeds
    assert table[1]["task.reg_noise_std=0.05"] == ""  # the failed job: no result
    assert float(table[2]["task.reg_noise_std=0.0"]) == pytest.approx(29.25)  # (28.5 + 30) / 2
    assert float(table[2]["task.reg_noise_std=0.05"]) == 30.0 and table[3]["task.reg_noise_std=0.05"] == "1"
    md = (sweep / "table.md").read_text()
    assert "| a | 28.50 | **30.00** |" in md and "| **mean** | 29.25 | **30.00 (1 of 2)** |" in md
    assert "mean over the seeds" in md and "psnr_result" in md
    assert md.split("\n# ")[0] in (sweep / "results.md").read_text().replace("## PSNR", "# PSNR")
    tex = (sweep / "table.tex").read_text()
    assert [line for line in tex.splitlines() if line.startswith("\\") and "rule" in line] == [
        "\\toprule",
        "\\midrule",
        "\\midrule",
        "\\bottomrule",
    ]
    assert (
        "\\begin{tabular}{lrr}" in tex
        and "image & task.reg\\_noise\\_std=0.0 & task.reg\\_noise\\_std=0.05 \\\\" in tex
    )
    assert "a & 28.50 & \\textbf{30.00} \\\\" in tex and "b & 30.00 &  \\\\" in tex
    assert "mean & 29.25 & \\textbf{30.00 (1 of 2)} \\\\" in tex
    assert "_" not in tex.replace("\\_", "").split("\\begin")[1]  # every underscore of the table escaped


def test_results_png_plots_what_the_tables_report(tmp_path, monkeypatch):
    """It plotted the raw output's psnr_gt, titled "mean psnr gt per setting", while psnr_final (and the tables)
    report the averaged output: the plot's peak was not the tables' number."""
    import matplotlib.axes

    from dip_lightning.sweeps.gather import gather
    from dip_lightning.sweeps.plots import curve_labels

    plotted, labels = [], {}
    original_plot, original_set = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.set
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "plot",
        lambda ax, x, y, **kw: plotted.append((list(x), list(y), kw["label"])) or original_plot(ax, x, y, **kw),
    )
    monkeypatch.setattr(matplotlib.axes.Axes, "set", lambda ax, **kw: labels.update(kw) or original_set(ax, **kw))
    sweep = tmp_path / "sweep"
    averaged = {
        "iteration": [0, 1, 2],
        "loss": [1, 1, 1],
        "psnr_fit": [20, 21, 22],
        "psnr_gt": [20, 24, 22],
        "psnr_gt_avg": [20, 23, 25],
    }
    job(sweep, 0, ["data.image=/d/a.png", "task.exp_weight=0.99"], stopped("/d/a.png", 25.0, 25.0), averaged)
    gather(sweep)
    assert (sweep / "results.png").is_file()
    ((x, y, legend),) = plotted
    assert x == [0, 1, 2] and y == [20, 23, 25]  # psnr_gt_avg, not psnr_gt
    assert labels["title"] == "PSNR of the averaged output vs the ground truth, mean per setting"
    assert labels["ylabel"] == "PSNR of the averaged output vs ground truth (dB)"  # words, not a column name
    assert "result 25.00 dB" in legend and "best (oracle) 25.00" in legend
    raw = {**averaged, "psnr_gt_avg": averaged["psnr_gt"]}
    assert curve_labels([raw])[0] == "psnr_gt_avg" and "no averaging" in curve_labels([raw])[1]
    # without ground truth, the fit to the observation; an old curves.csv (psnr_observed) is read as psnr_fit
    old = tmp_path / "old"
    job(old, 0, ["data.image=/d/a.png"], metrics_of("/d/a.png", psnr_final=None, psnr_best=None))
    write_old_curves(old / "0" / "curves.csv", [0, 0, 0], gt=False)
    plotted.clear()
    gather(old)
    assert plotted[0][1] == [20.0, 21.0, 22.0] and labels["ylabel"] == "PSNR of A(output) vs observation (dB)"
    assert "vs the observation" in labels["title"]


def test_headers_round_an_optuna_trials_floats_and_the_csv_keeps_them(tmp_path):
    from dip_lightning.sweeps.gather import gather

    sweep = tmp_path / "sweep"
    for num, lr in enumerate(["0.006260326907499732", "0.01"]):
        job(sweep, num, [f"optimizer.lr={lr}", "data.image=/d/a.png"], stopped("/d/a.png", 25.0 + num, 26.0))
    gather(sweep)
    assert "optimizer.lr=0.00626" in (sweep / "table.md").read_text()
    assert "0.006260326907499732" not in (sweep / "table.md").read_text() + (sweep / "results.md").read_text()
    assert "optimizer.lr=0.006260326907499732" in (sweep / "table.csv").read_text()
