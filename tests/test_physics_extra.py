"""task=physics without its optional extra, and measurement files (data.observed=*.pt|*.npy) outside it: both
refused in one paragraph that says what to do. These run in the main environment, which has no deepinv; the
physics task itself is tested in tests/physics (make test runs it in .venv-physics)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import TINY

from dip_lightning.data.io import read_measurement
from dip_lightning.errors import DIPError


def test_task_physics_without_deepinv_says_what_to_install(run_dip, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepinv", None)  # what an environment without the extra imports
    with pytest.raises(DIPError) as err:
        run_dip([*TINY, "task=physics", "iterations=2"])
    text = str(err.value)
    assert "make install-physics" in text and ".venv-physics/bin/dip-run" in text  # this checkout's way
    assert "pip install -e '.[deepinv]'" in text and "torchvision" in text and "torch==2.14.1" not in text
    assert "\n" not in text  # one paragraph


def test_a_measurement_file_is_refused_by_an_image_task(run_dip, tmp_path):
    path = tmp_path / "y.pt"
    torch.save(torch.rand(1, 3, 64, 64), path)
    with pytest.raises(DIPError, match=r"y\.pt.*only task=physics reads.*image file"):
        run_dip([*TINY, "task=denoising", "data.image=null", f"data.observed={path}", "iterations=2"])


def test_measurement_files_read_as_tensors(tmp_path):
    y = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "y.npy", y)
    assert torch.equal(read_measurement(tmp_path / "y.npy"), torch.from_numpy(y).float())
    torch.save(torch.tensor([1 + 2j, 3 - 1j]), tmp_path / "k.pt")  # complex: real and imaginary in a last axis
    assert read_measurement(tmp_path / "k.pt").tolist() == [[1.0, 2.0], [3.0, -1.0]]
    torch.save({"y": torch.zeros(2)}, tmp_path / "d.pt")
    with pytest.raises(DIPError, match=r"holds a dict, not a tensor"):
        read_measurement(tmp_path / "d.pt")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(DIPError, match=r"could not be read as a measurement"):
        read_measurement(tmp_path / "bad.npy")
    with pytest.raises(DIPError, match=r"does not exist"):
        read_measurement(tmp_path / "missing.pt")
