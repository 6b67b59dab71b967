"""experiments/paper/reproduce.py and its steps (collect, score, render): no DIP run, no benchmark data, seconds."""

from __future__ import annotations

import re

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def paper():
    """The package experiments/paper (collect, score, render, tables, reproduce)."""
    import importlib
    import sys

    sys.path.insert(0, str(REPO / "experiments"))
    try:
        return importlib.import_module("paper.reproduce"), importlib.import_module("paper.tables")
    finally:
        sys.path.remove(str(REPO / "experiments"))


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
    assert "data.observed=denoise9/noisy_sigma25/${stem}_noisy.png" in cmd
    assert rep.collect.job_stem(table, {"stem": "b"}) == "b"
    sr = tables.TABLES["sr_set5_x4"]
    assert rep.collect.job_stem(sr, {"data.image": "'/x/set5/dip_gt_x4/baby_GT.png'"}) == "baby"
