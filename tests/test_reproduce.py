"""experiments/paper/reproduce.py and its steps (collect, score, render) on a small sweep folder made here: no DIP
run, no benchmark data, seconds."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from conftest import TINY_NET, compose_cfg, import_experiment, save_png
from omegaconf import OmegaConf

from dip_lightning import history
from dip_lightning.errors import DIPError


@pytest.fixture(scope="module")
def paper():
    """The package experiments/paper (collect, score, render, tables, reproduce)."""
    return import_experiment("paper.reproduce"), import_experiment("paper.tables")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--table", "denoise10", "--mode", "quick"], "TABLE='denoise10' is not known; expected one of denoise9"),
        (["--table", "denoise9", "--mode", "fast"], "MODE='fast' is not known; expected quick"),
        (["--table", "sr_set5_x4", "--data", "/nonexistent"], "DATA='/nonexistent'.*set5 does not exist"),
    ],
)
def test_reproduce_rejects_bad_arguments(paper, argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        paper[0].main(argv)
    assert exc.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_reproduce_sweeps_pairs_by_image_name(paper, tmp_path):
    """A table with given inputs sweeps +stem so each ground truth is paired with its own corrupted input."""
    rep, tables = paper
    (tmp_path / "denoise9" / "noisy_sigma25").mkdir(parents=True)
    for stem in ("a", "b"):
        (tmp_path / "denoise9" / f"{stem}_GT.png").touch()
    table = tables.TABLES["denoise9"]
    assert table.stems(tmp_path) == ["a", "b"]
    cmd = rep.collect.dip_command(table, "quick", tmp_path, ["a", "b"], tmp_path / "sweep", 10, "cpu", [])
    assert "-m" in cmd and "+stem=a,b" in cmd
    assert "launcher=packed" not in cmd  # quick mode on a CPU: one job at a time
    assert "data.observed=denoise9/noisy_sigma25/${stem}_noisy.png" in cmd
    assert rep.collect.job_stem(table, {"stem": "b"}) == "b"
    sr = tables.TABLES["sr_set5_x4"]
    assert rep.collect.job_stem(sr, {"data.image": "'/x/set5/dip_gt_x4/baby_GT.png'"}) == "baby"


def fake_sweep(tmp_path, crop: str) -> tuple:
    """denoise9 stand-ins (40x40: not a multiple of 32) and the sweep a 3-scale net (size multiple 8) would leave:
    job 0 (image a) finished, job 1 (image b) failed."""
    rng = np.random.default_rng(0)
    data, sweep = tmp_path / "data", tmp_path / "sweep"
    (data / "denoise9" / "noisy_sigma25").mkdir(parents=True)
    for stem in ("a", "b"):
        clean = rng.integers(60, 200, (40, 40, 3), dtype=np.uint8)
        noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
        save_png(data / "denoise9" / f"{stem}_GT.png", clean)
        save_png(data / "denoise9" / "noisy_sigma25" / f"{stem}_noisy.png", noisy)
    for i, stem in enumerate(("a", "b")):
        job = sweep / str(i)
        (job / ".hydra").mkdir(parents=True)
        overrides = [f"+stem={stem}", "data.image=denoise9/${stem}_GT.png", f"data.crop={crop}", f"data.root={data}"]
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        OmegaConf.save(compose_cfg(["task=denoising", *TINY_NET, *overrides]), job / ".hydra" / "config.yaml")
    job = sweep / "0"
    metrics = {"psnr_final": 30.0, "psnr_best": 31.0, "best_step": 9, "iterations": 10, "seconds": 2.0}
    (job / "metrics.json").write_text(json.dumps({**metrics, "device": "cpu (1 threads)"}))
    columns = (history.ITERATION, *history.COLUMNS)
    (job / "curves.csv").write_text(",".join(columns) + "\n" + "".join(f"{k},0.1,20,{25 + k},30\n" for k in range(10)))
    side = 40 if crop == "null" else int(crop)
    for name in ("restored", "observed"):
        save_png(job / f"{name}.png", rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    (sweep / "1" / "error.json").write_text(json.dumps({"error": "boom"}))
    (sweep / "command.json").write_text(
        json.dumps({"command": ["dip-run", "-m"], "wall_seconds": 90, "rc": 1, "code": "`abc1234`"})
    )
    return data, sweep


@pytest.mark.parametrize(
    "mode, crop, side, words", [("full", "null", 40, "whole images"), ("quick", "24", 24, "24x24 centre crops")]
)
def test_a_sweep_is_collected_scored_and_rendered_with_its_configs_crop_and_size_multiple(
    paper, tmp_path, mode, crop, side, words
):
    rep, tables = paper
    collect, score, render = rep.collect, rep.score, rep.render
    table = tables.TABLES["denoise9"]
    data, sweep_dir = fake_sweep(tmp_path, crop)

    sweep = collect.read_sweep(table, sweep_dir)
    assert (sweep.protocol.crop, sweep.protocol.size_multiple) == (None if crop == "null" else side, 8)
    assert sweep.jobs["a"][0].curves[history.PSNR_GT][-1] == 34 and sweep.jobs["b"][0].error == "boom"
    assert (sweep_dir / "results.md").exists()  # dip-gather ran on it

    scores = score.score(table, sweep, data, ["a"], slow=False)
    assert scores.rows[0]["clean"].shape == (side, side, 3)  # the net's multiple of 8, not 32: 40 px stay 40 px
    assert scores.rows[0]["dip"] == {"DIP final iterate": 34.0, "DIP averaged": 30.0, "DIP best": 31.0}
    assert scores.gaps.main == pytest.approx(30.0 - 30.43) and scores.gaps.late == ["a"]
    md = render.markdown(table, mode, scores, sweep, "python reproduce.py", "`def5678`", baselines=False)
    assert words in md and "at code commit `abc1234`" in md
    assert "| a | " in md and "| **mean** | " in md and "**-0.43 dB**" in md

    # with the failed job in the table: no mean over the one that finished, no gap, and it says so
    scores = score.score(table, sweep, data, ["a", "b"], slow=False)
    assert scores.failed == ["b"] and scores.gaps.main is None
    md = render.markdown(table, mode, scores, sweep, "python reproduce.py", "`def5678`", baselines=False)
    assert "failed: boom" in md and "**Incomplete**: 1 of 2 jobs failed (b)" in md and "dB**" not in md
    render.write_figure(tmp_path / "fig.png", table, scores.rows)
    assert (tmp_path / "fig.png").stat().st_size > 0


@pytest.mark.parametrize("remove", ["0/curves.csv", "0/restored.png", "command.json"])
def test_a_sweep_without_what_the_current_code_writes_is_refused(paper, tmp_path, remove):
    rep, tables = paper
    _, sweep_dir = fake_sweep(tmp_path, "null")
    (sweep_dir / remove).unlink()
    name = re.escape(remove.rpartition("/")[2])
    with pytest.raises(DIPError, match=rf"sweep '{re.escape(str(sweep_dir))}'.*{name}.*Rerun"):
        rep.collect.read_sweep(tables.TABLES["denoise9"], sweep_dir)


def test_several_seeds_give_mean_columns_each_seeds_mean_and_the_runs_averaged(paper, tmp_path):
    """denoise9 with --seeds 0,1: each DIP column is the mean of the two runs, and the pixel mean of their restored
    images (two independent errors: about 3 dB better than either) is scored against the paper's 31.00."""
    rep, tables = paper
    collect, score, render = rep.collect, rep.score, rep.render
    table = tables.TABLES["denoise9"]
    rng = np.random.default_rng(1)
    data, sweep_dir = tmp_path / "data", tmp_path / "sweep"
    (data / "denoise9" / "noisy_sigma25").mkdir(parents=True)
    clean = rng.integers(60, 200, (40, 40, 3), dtype=np.uint8)
    save_png(data / "denoise9" / "a_GT.png", clean)
    save_png(data / "denoise9" / "noisy_sigma25" / "a_noisy.png", clean)
    columns = (history.ITERATION, *history.COLUMNS)
    for seed, final in ((0, 30.0), (1, 31.0)):
        job = sweep_dir / str(seed)
        (job / ".hydra").mkdir(parents=True)
        overrides = [
            "+stem=a",
            "data.image=denoise9/${stem}_GT.png",
            "data.crop=null",
            f"data.root={data}",
            f"seed={seed}",
        ]
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        OmegaConf.save(compose_cfg(["task=denoising", *TINY_NET, *overrides]), job / ".hydra" / "config.yaml")
        metrics = {"psnr_final": final, "psnr_best": final + 1, "best_step": 5 + seed, "iterations": 10}
        (job / "metrics.json").write_text(json.dumps({**metrics, "seconds": 2.0 + seed, "device": "cpu"}))
        (job / "curves.csv").write_text(
            ",".join(columns) + "\n" + "".join(f"{k},0.1,20,{25 + k + seed},{28 + 0.3 * k}\n" for k in range(10))
        )
        restored = np.clip(clean + rng.normal(0, 8, clean.shape), 0, 255).astype(np.uint8)
        for name, image in (("restored", restored), ("observed", clean), ("ground_truth", clean)):
            save_png(job / f"{name}.png", image)
    (sweep_dir / "command.json").write_text(
        json.dumps({"command": ["dip-run", "-m"], "wall_seconds": 9, "rc": 0, "code": "`abc1234`"})
    )

    sweep = collect.read_sweep(table, sweep_dir)
    assert [j.seed for j in sweep.jobs["a"]] == [0, 1]
    scores = score.score(table, sweep, data, ["a"], slow=False)
    row = scores.rows[0]
    assert row["dip"]["DIP averaged"] == 30.5 and row["dip"]["DIP final iterate"] == 34.5 and row["seconds"] == 2.5
    assert row["runs"] == {0: 30.0, 1: 31.0} and row["best_step"] == 6
    assert row["dip"]["DIP, 2 runs averaged"] > row["members_8bit"] + 2  # two independent errors halve the MSE
    assert (sweep_dir / "ensembles" / "a.png").is_file()
    assert scores.gaps.seed_means == {0: 30.0, 1: 31.0}
    assert scores.gaps.ensemble == pytest.approx(scores.means["DIP, 2 runs averaged"] - 31.00)
    md = render.markdown(table, "full", scores, sweep, "python reproduce.py", "`def5678`", baselines=False)
    assert "x 2 seeds (0, 1;" in md and "seed 0 30.00, seed 1 31.00 dB" in md
    assert "the paper's 'averaged over 2 runs' is 31.00" in md and "| DIP best | DIP, 2 runs averaged |" in md
    # the averaged output's curve: 28 + 0.3 k at iteration k + 1, the same in both runs
    assert scores.gaps.curve_points == pytest.approx({5: 29.2, 10: 30.7})
    assert "29.20 at iteration 5, 30.70 at iteration 10; it first reaches the paper's 30.43 at iteration 10" in md


def test_an_unwritable_runs_dir_is_one_clear_error_before_any_job(paper, tmp_path, capsys):
    rep, _ = paper
    (tmp_path / "denoise9").mkdir()
    (tmp_path / "denoise9" / "a_GT.png").touch()
    blocker = tmp_path / "file"
    blocker.write_text("a file where the runs folder should go")
    with pytest.raises(SystemExit):
        rep.main(["--table", "denoise9", "--data", str(tmp_path), "--runs-dir", str(blocker / "runs")])
    assert f"--runs-dir '{blocker / 'runs'}' cannot be created" in capsys.readouterr().err


def test_the_seed_list_is_checked_and_swept(paper, tmp_path, capsys):
    rep, tables = paper
    for bad, words in (("0,x", "not valid; expected comma-separated whole numbers"), ("1,1", "repeats a seed")):
        with pytest.raises(SystemExit):
            rep.main(["--table", "denoise9", "--seeds", bad, "--data", str(tmp_path)])
        assert words in capsys.readouterr().err
    cmd = rep.collect.dip_command(
        tables.TABLES["denoise9"], "full", tmp_path, ["a"], tmp_path / "s", 9, "gpu", [], [0, 1]
    )
    assert "seed=0,1" in cmd
    assert "launcher=packed" in cmd and "hydra.launcher.pack=auto" in cmd  # full mode on a GPU packs by default
    args = (tables.TABLES["denoise9"], "full", tmp_path, ["a"], tmp_path / "s", 9, "gpu", ["launcher=local"])
    cmd = rep.collect.dip_command(*args)
    assert "launcher=packed" not in cmd and "launcher=local" in cmd  # the user's launcher wins


def rendered_quick_table(paper, tmp_path) -> tuple:
    """The denoise9 quick result file of fake_sweep (24 px crops, image a finished, b failed), with no baselines."""
    rep, tables = paper
    table = tables.TABLES["denoise9"]
    data, sweep_dir = fake_sweep(tmp_path, "24")
    sweep = rep.collect.read_sweep(table, sweep_dir)
    scores = rep.score.score(table, sweep, data, ["a", "b"], slow=False)
    out = tmp_path / "results"
    out.mkdir()
    md = out / "denoise9-quick.md"
    md.write_text(rep.render.markdown(table, "quick", scores, sweep, "python reproduce.py", "`def5678`", False))
    return data, out, md, scores


def test_zs_n2n_runs_on_the_device_and_threads_asked_and_only_when_asked(paper, tmp_path, monkeypatch):
    rep, tables = paper
    table = tables.TABLES["denoise9"]
    calls = []
    fake = lambda noisy, **kw: calls.append(kw) or rep.score.B.BaselineResult("ZS-N2N", noisy, 1.5)  # noqa: E731
    monkeypatch.setattr(rep.score.B, "zs_n2n_denoise", fake)
    img = np.full((8, 8, 3), 0.5)
    inputs = {"clean": img, "observed": img}
    assert rep.score.run_baselines(table, inputs, None, slow=False) == []  # by default: no ZS-N2N, no CPU ones
    opts = rep.score.BaselineOptions(slow=False, zs_n2n=True, device="gpu", threads=2)
    assert [b[0] for b in rep.score.run_baselines(table, inputs, None, options=opts)] == ["ZS-N2N"]
    assert calls == [{"device": "gpu", "threads": 2}]
    only = rep.score.BaselineOptions(which=["zs-n2n"])  # --baselines-only zs-n2n: not BM3D or NLM
    assert [b[0] for b in rep.score.run_baselines(table, inputs, None, options=only)] == ["ZS-N2N"]


def test_baselines_only_adds_columns_to_the_result_file_without_dip(paper, tmp_path, monkeypatch):
    """--baselines-only zs-n2n: the real ZS-N2N (5 iterations here) on the mode's inputs, added as a column of the
    existing table before 'best step'; a rerun replaces it; a run on one image keeps the others' cells."""
    rep, _ = paper
    data, out, md, _ = rendered_quick_table(paper, tmp_path)
    real = rep.score.B.zs_n2n_denoise
    monkeypatch.setattr(rep.score.B, "zs_n2n_denoise", lambda noisy, **kw: real(noisy, iterations=5, **kw))
    argv = ["--table", "denoise9", "--mode", "quick", "--data", str(data), "--out", str(out), "--device", "cpu"]
    argv += ["--baselines-only", "zs-n2n", *TINY_NET, "data.crop=24"]
    rep.main(argv)
    text = md.read_text()
    assert "| image | input | DIP final iterate | DIP averaged | DIP best | ZS-N2N | best step | DIP s |" in text
    row_a = next(line for line in text.splitlines() if line.startswith("| a | "))
    assert re.fullmatch(r"\| a \| [\d.]+ \| 34\.00 \| 30\.00 \| 31\.00 \| [\d.]+ \([\d.]+ s\) \| 9 \| 2 \|", row_a)
    assert re.search(r"\| \*\*mean\*\* \| [\d.]+ \| (\*\*n/a\*\* \| ){3}[\d.]+ \([\d.]+ s\) \|  \|", text)  # b failed
    assert text.count("Added without rerunning DIP (ZS-N2N): `python experiments/paper/reproduce.py") == 1
    assert "ZS-N2N on cpu" in text and "1 threads" in text

    rep.main([*argv, "--images", "b"])  # a rerun on b alone: one column still, a's cell kept, the note replaced
    again = md.read_text()
    assert again.count("| ZS-N2N |") == 1 and row_a in again
    assert again.count("Added without rerunning DIP") == 1 and "--images b" in again


def test_baselines_only_refuses_other_inputs_unknown_names_and_a_missing_file(paper, tmp_path, capsys):
    rep, _ = paper
    data, out, md, _ = rendered_quick_table(paper, tmp_path)
    base = ["--table", "denoise9", "--mode", "quick", "--data", str(data), "--out", str(out)]
    cases = [
        (["--baselines-only", "bm3d", *TINY_NET, "data.crop=16"], "image a: its input scores .* dB here but"),
        (["--baselines-only", "bm4d"], "bm4d is not a baseline of denoise9; expected some of bm3d,nlm,zs-n2n"),
        (["--baselines-only", "zs-n2n", "--mode", "full"], "denoise9-full.md does not exist"),
    ]
    before = md.read_text()
    for extra, words in cases:
        with pytest.raises(SystemExit) as exc:
            rep.main([*base, *extra])
        assert exc.value.code == 2 and re.search(words, capsys.readouterr().err)
    assert md.read_text() == before  # nothing written


def test_committed_result_tables_name_no_folder_of_the_machine_that_made_them():
    """Recorded commands say dip-run, <data> and paths relative to the checkout (paper/render.portable)."""
    import re

    from conftest import REPO, import_experiment

    render = import_experiment("paper.render")
    made = "/work/main/.venv/bin/dip-run -m data.root=/work/shared/data hydra.sweep.dir=/tmp/x/experiments/paper/runs/a"
    assert render.portable(made) == "dip-run -m data.root=<data> hydra.sweep.dir=experiments/paper/runs/a"
    machine = re.compile(r"(?<![\w.<])/(?:work|tmp|root|opt|home)/")
    for table in sorted((REPO / "experiments" / "paper" / "results").glob("*.md")):
        found = [line for line in table.read_text().splitlines() if machine.search(line)]
        assert not found, f"{table.name} names machine folders: {found[0][:200]}"
