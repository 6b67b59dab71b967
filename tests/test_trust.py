"""What dip-run trusts and what it checks (docs/reliability.md: Trust model).

A config is code, as a Python file is: its `_target_`s name the Python to run, the user's own modules included
(the README's "Add a task"), and dip_lightning filters none of them. (Hydra 1.3.8 refuses a few targets such as
os.system by a best-effort blocklist of its own, hydra/_internal/target_policy.py; Hydra 1.3.2, which pyproject
allows, has none. Neither is a boundary: choose configs as you choose code.)

A checkpoint or a CNN weight file is data, which someone may send you: it is read with torch.load(weights_only=True),
so a file holding a pickled Python object is refused, with one paragraph naming it, and the object's code never runs.
"""

import builtins

import pytest
import torch

from dip_lightning.errors import DIPError


class UsersOwnCallback:
    """A class of the user's own module (here, this test module), named by a config's _target_."""

    def __init__(self, every: int = 1):
        self.every = every


def test_a_configs_target_in_a_users_own_module_is_built():
    from conftest import compose_cfg

    from dip_lightning.config.compose import build

    cfg = compose_cfg(["+callbacks.mine._target_=test_trust.UsersOwnCallback", "+callbacks.mine.every=5"])
    built = build(cfg.callbacks.mine)
    assert type(built).__name__ == "UsersOwnCallback" and built.every == 5


class Payload:
    """Unpickling it opens (creates) `marker`: the stand-in for any code a pickled object can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


@pytest.fixture
def payload_file(tmp_path):
    """(path, marker): a torch file holding a pickled object beside tensors, and the file its code would make."""

    def make(name, state):
        path, marker = tmp_path / name, tmp_path / f"{name}.ran"
        torch.save({**state, "extra": Payload(marker)}, path)
        torch.load(path, weights_only=False).pop("extra").close()  # what an unchecked load does: it runs
        assert marker.exists()
        marker.unlink()
        return path, marker

    return make


def one_paragraph(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and len(text) < 1200, text
    return text


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(payload_file):
    from dip_lightning.checkpoint import load_checkpoint

    path, marker = payload_file("last.ckpt", {"format": 4, "iteration": 3, "net": {"w": torch.zeros(2)}})
    with pytest.raises(DIPError, match=r"checkpoint '.*last\.ckpt' holds a pickled Python object \(\w+\.open\)") as err:
        load_checkpoint(path)
    text = one_paragraph(err.value)
    assert "weights_only=True" in text and "\x1b" not in text  # why it is not loaded; none of torch's terminal codes
    assert not marker.exists()


def test_cnn_weights_holding_a_pickled_object_are_refused_without_running_it(payload_file):
    from dip_lightning.nets.cnns import build_cnn, load_cnn

    path, marker = payload_file("alexnet.pth", dict(build_cnn("alexnet_caffe").state_dict()))
    with pytest.raises(DIPError, match=r"task.weights file '.*alexnet\.pth' holds a pickled Python object") as err:
        load_cnn("alexnet_caffe", str(path))
    text = one_paragraph(err.value)
    assert "open" in text and "weights_only=True" in text  # what it holds (io.open), and why it is not loaded
    assert not marker.exists()


def test_a_feature_inversion_config_reads_its_weights_as_data(payload_file):
    """The path a config takes (task=feature_inversion task.weights=...): the same refusal, before any run."""
    from conftest import compose_cfg

    from dip_lightning.run.prepare import build_run

    path, marker = payload_file("vgg.pth", {})
    cfg = compose_cfg(["task=feature_inversion", "task.cnn=alexnet_caffe", f"task.weights={path}"])
    with pytest.raises(DIPError, match="holds a pickled Python object") as err:
        build_run(cfg)
    one_paragraph(err.value)
    assert not marker.exists()


def test_a_damaged_weight_file_is_one_paragraph(tmp_path):
    from dip_lightning.nets.cnns import load_cnn

    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DIPError, match=r"task.weights file '.*cut\.pth' could not be read as a PyTorch state_dict"):
        try:
            load_cnn("alexnet_caffe", str(tmp_path / "cut.pth"))
        except DIPError as err:
            one_paragraph(err)
            raise
