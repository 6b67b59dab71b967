"""Faults of checkpoints and resumes, each refused with one paragraph (a DIPError) naming the file:

- a resume that changes the run's stopping rules (added, removed, under any callbacks key), or whose code differs
  (the package version or the source hash; `resume_force=true` accepts that);
- a damaged checkpoint (a weight changed, a raw byte flipped): its content no longer matches its sha256;
- a full disk while a checkpoint is written: the previous one stays byte for byte;
- a checkpoint that lacks a field or holds one of another type.
"""

from __future__ import annotations

import errno
import logging
import shutil
import zipfile

import pytest
import torch
from test_resume import BASE, assert_same, small_task

from dip_lightning.callbacks.early_stopping import ESWMV
from dip_lightning.checkpoint import (
    CHECKPOINT,
    Interrupted,
    checkpoint_state,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    state_checksum,
)
from dip_lightning.checkpoint import identity as run_identity
from dip_lightning.errors import DIPError

RUN = [*BASE, "iterations=40"]
KILL = ["+callbacks.kill._target_=test_resume.SignalAt", "+callbacks.kill.at=20"]


@pytest.fixture(autouse=True)
def _keep_thread_count():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """The checkpoint of a run of RUN (ES-WMV as its stopping rule) stopped by SIGTERM at iteration 20 of 40."""
    from conftest import compose_cfg

    from dip_lightning.run.job import run

    run_dir = tmp_path_factory.mktemp("stopped")
    n = torch.get_num_threads()
    with pytest.raises(Interrupted):
        run(compose_cfg([*RUN, *KILL]), run_dir)
    torch.set_num_threads(n)
    return run_dir / CHECKPOINT


def one_paragraph(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert isinstance(err.value, DIPError) and "\n" not in text.strip(), text
    return text


def assert_not_run(run_dir):
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "restored.png").exists()


# ------------------------------------------------------------------------------------------ stopping rules
@pytest.mark.parametrize(
    "override, differs",
    [
        (
            "~callbacks.early_stopping",
            r"callbacks\.early_stopping\._target_: checkpoint '[\w.]+ESWMV', now \(not set\)",
        ),
        (
            "+callbacks.sv._target_=dip_lightning.callbacks.self_validation.SelfValidation",
            r"callbacks\.sv\._target_: checkpoint \(not set\), now '[\w.]+SelfValidation'",
        ),
        ("callbacks.early_stopping.window=7", r"callbacks\.early_stopping\.window: checkpoint 5, now 7"),
    ],
)
def test_a_resume_that_adds_or_removes_a_stopping_rule_is_refused(run_dip, stopped, tmp_path, override, differs):
    with pytest.raises(DIPError) as err:
        run_dip([*RUN, f"resume={stopped}", override], run_dir=tmp_path / "r")
    assert_not_run(tmp_path / "r")
    text = one_paragraph(err)
    assert "written by a different run" in text and str(stopped) in text
    assert __import__("re").search(differs, text), text


def test_callbacks_that_are_not_stopping_rules_may_still_change_on_resume(run_dip, stopped, tmp_path):
    extra = ["+callbacks.snap._target_=dip_lightning.callbacks.ImageSnapshots", "+callbacks.snap.every_n_iterations=10"]
    metrics, _ = run_dip([*RUN, f"resume={stopped}", "callbacks.progress.log_seconds=50", *extra], tmp_path / "r")
    assert metrics["iterations"] == 40


def test_the_stopping_rules_are_compared_under_any_key_in_the_identity():
    rule = {"_target_": "dip_lightning.callbacks.self_validation.SelfValidation", "patience": 5}
    progress = {"_target_": "dip_lightning.callbacks.DIPProgress", "log_seconds": 5.0}
    with_rule = run_identity.config_identity({"seed": 0, "callbacks": {"sv": rule, "progress": progress}})
    assert with_rule["callbacks.sv.patience"] == "5" and "callbacks.progress.log_seconds" not in with_rule
    # a target that cannot be imported cannot be told from a rule: it is compared
    assert "callbacks.x._target_" in run_identity.config_identity({"callbacks": {"x": {"_target_": "nowhere.X"}}})


def test_restoring_into_other_on_device_callbacks_is_refused(tmp_path):
    """restore_checkpoint checks the stoppers' states against the run's stoppers (a checkpoint written before the
    identity held every rule's settings gets here)."""
    es = ESWMV(window=3, patience=100, stop=False)
    es.config_name = "early_stopping"
    task, opt = small_task(net_seed=0)
    for _ in range(3):
        task.dip_iteration(opt)
    state = checkpoint_state(task, task.by_hand(opt).trainable, 0, [])
    with pytest.raises(DIPError) as err:
        restore_checkpoint(task, state, "x.ckpt", task.by_hand(opt).trainable, 0, [es])
    text = one_paragraph(err)
    assert "'x.ckpt'" in text and "early_stopping would start at iteration 3" in text and "overrides.yaml" in text
    state = checkpoint_state(task, task.by_hand(opt).trainable, 0, [es])
    with pytest.raises(DIPError, match="early_stopping of the checkpoint would be dropped"):
        restore_checkpoint(task, state, "x.ckpt", task.by_hand(opt).trainable, 0, [])


# ---------------------------------------------------------------------------------------------------- code
def test_a_resume_after_the_code_changed_is_refused_unless_forced(run_dip, stopped, tmp_path, monkeypatch):
    recorded = torch.load(stopped, weights_only=True)["identity"]
    assert recorded[run_identity.SOURCE] == run_identity.source_hash()
    assert recorded[run_identity.VERSION] == run_identity.package_version()
    monkeypatch.setattr(run_identity, "source_hash", lambda: "0123456789abcdef")
    with pytest.raises(DIPError) as err:
        run_dip([*RUN, f"resume={stopped}"], run_dir=tmp_path / "r")
    assert_not_run(tmp_path / "r")
    text = one_paragraph(err)
    assert f"source code hash {recorded[run_identity.SOURCE]} vs 0123456789abcdef" in text, text
    assert "dip_lightning version" not in text and "resume_force=true" in text and str(stopped) in text
    monkeypatch.setattr(run_identity, "package_version", lambda: "9.9.9")
    with pytest.raises(DIPError, match=rf"dip_lightning version {recorded[run_identity.VERSION]} vs 9\.9\.9"):
        run_dip([*RUN, f"resume={stopped}"], run_dir=tmp_path / "r")
    metrics, _ = run_dip([*RUN, f"resume={stopped}", "resume_force=true"], run_dir=tmp_path / "forced")
    assert metrics["iterations"] == 40


def test_resume_force_accepts_code_differences_only(run_dip, stopped, tmp_path, monkeypatch):
    monkeypatch.setattr(run_identity, "source_hash", lambda: "0123456789abcdef")
    with pytest.raises(DIPError, match=r"different run.*seed: checkpoint 0, now 3"):
        run_dip([*RUN, f"resume={stopped}", "resume_force=true", "seed=3"], run_dir=tmp_path / "r")


def test_a_checkpoint_without_a_code_record_is_refused_unless_forced(run_dip, stopped, tmp_path):
    state = torch.load(stopped, weights_only=True)
    for key in (run_identity.VERSION, run_identity.SOURCE, run_identity.FORCE):
        del state["identity"][key]
    old = save_checkpoint(tmp_path / "old.ckpt", state)
    with pytest.raises(DIPError, match=r"version \(not recorded\) vs .*source code hash \(not recorded\) vs"):
        run_dip([*RUN, f"resume={old}"], run_dir=tmp_path / "r")
    metrics, _ = run_dip([*RUN, f"resume={old}", "resume_force=true"], run_dir=tmp_path / "forced")
    assert metrics["iterations"] == 40


def test_resume_force_is_a_boolean(run_dip, tmp_path):
    from conftest import compose_cfg

    assert compose_cfg([]).resume_force is False
    with pytest.raises(DIPError, match="resume_force='yes' is not valid"):
        run_dip([*RUN, "resume_force=yes"], run_dir=tmp_path / "r")


def test_the_source_hash_covers_the_package_and_is_stable():
    first = run_identity.source_hash()
    run_identity.source_hash.cache_clear()
    assert run_identity.source_hash() == first and len(first) == 16
    files = sorted(p.relative_to(run_identity.PACKAGE).as_posix() for p in run_identity.PACKAGE.rglob("*.py"))
    hashed = [f for f in files if not f.startswith(run_identity.NOT_HASHED)]
    for module in ("nets/skip.py", "tasks/base.py", "operators/linear.py", "loop/engine.py", "callbacks/roles.py"):
        assert module in hashed


# ------------------------------------------------------------------------------------------------ damage
def damaged_copy(stopped, tmp_path, change) -> "Path":  # noqa: F821
    """A copy of the stopped checkpoint with `change(state)` applied, saved without a new checksum."""
    state = torch.load(stopped, weights_only=True)
    change(state)
    torch.save(state, tmp_path / "damaged.ckpt")
    return tmp_path / "damaged.ckpt"


def first_weight(state):
    return next(v for k, v in state["task"]["net"].items() if k.endswith("weight") and v.ndim == 4)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: first_weight(s).view(-1)[0].fill_(-1.4e37),  # an exponent bit
        lambda s: first_weight(s).view(-1).view(torch.uint8)[1].bitwise_xor_(1),  # the lowest mantissa bit
        lambda s: s["optimizer"]["param_groups"][0].update(lr=0.02),
        lambda s: s["task"]["history"]["loss"].__setitem__(3, 0.5),
    ],
    ids=["exponent", "mantissa", "lr", "history"],
)
def test_a_changed_value_in_a_checkpoint_is_refused_as_damaged(run_dip, stopped, tmp_path, change):
    damaged = damaged_copy(stopped, tmp_path, change)
    with pytest.raises(DIPError) as err:
        load_checkpoint(damaged)
    text = one_paragraph(err)
    assert f"checkpoint {str(damaged)!r} is damaged: its content does not match the checksum" in text
    assert "resume from an earlier checkpoint or start again without resume=" in text
    with pytest.raises(DIPError, match="is damaged"):
        run_dip([*RUN, f"resume={damaged}"], run_dir=tmp_path / "r")
    assert_not_run(tmp_path / "r")


def records(path) -> dict[str, tuple[int, int]]:
    """name -> (offset of its bytes, size) of every record of a torch.save zip file (stored, not compressed)."""
    out = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            f.seek(info.header_offset + 26)
            name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
            out[info.filename] = (info.header_offset + 30 + name_len + extra_len, info.file_size)
    return out


@pytest.mark.parametrize("where", ["tensor data", "pickle"])
def test_a_raw_byte_flip_in_the_file_is_a_dip_error(stopped, tmp_path, where):
    flipped = tmp_path / "flipped.ckpt"
    shutil.copyfile(stopped, flipped)
    found = records(flipped)
    if where == "tensor data":  # the middle of the largest tensor
        offset, size = max((r for name, r in found.items() if "/data/" in name), key=lambda r: r[1])
    else:  # a key of the net's state_dict metadata, in the pickle
        offset, size = next(r for name, r in found.items() if name.endswith("data.pkl"))
    data = bytearray(flipped.read_bytes())
    data[offset + size // 2] ^= 0x40
    flipped.write_bytes(bytes(data))
    with pytest.raises(DIPError) as err:
        load_checkpoint(flipped)
    text = one_paragraph(err)
    assert str(flipped) in text and ("damaged" in text or "Could not read" in text), text


def test_no_byte_flip_anywhere_in_the_file_loads_another_state(stopped, tmp_path):
    """Over the whole file (zip headers, pickle, tensor data, directory): a flipped bit is a DIPError naming the
    file, or the state read is the one written (a flip in padding); never a bare traceback, never other values."""
    data = stopped.read_bytes()
    original = load_checkpoint(stopped)
    offset, size = next(r for name, r in records(stopped).items() if name.endswith("data.pkl"))
    positions = sorted({*range(0, len(data), len(data) // 100), *range(offset, offset + size, size // 40)})
    positions += range(len(data) - 200, len(data), 7)  # the central directory
    flipped, refused = tmp_path / "flipped.ckpt", 0
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        flipped.write_bytes(bytes(damaged))
        try:
            state = load_checkpoint(flipped)
        except DIPError as err:
            assert str(flipped) in str(err) and "\n" not in str(err), (position, str(err))
            refused += 1
            continue
        assert_same(original, state, f"byte {position}")
    assert refused > len(positions) // 2


def test_a_checkpoint_without_a_checksum_is_read_with_a_warning(stopped, tmp_path, caplog):
    state = torch.load(stopped, weights_only=True)
    assert state["checksum"] == state_checksum(state)
    del state["checksum"]
    torch.save(state, tmp_path / "old.ckpt")
    with caplog.at_level(logging.WARNING, logger="dip_lightning"):
        loaded = load_checkpoint(tmp_path / "old.ckpt")
    assert loaded["iteration"] == 20 and "checksum" not in loaded
    assert "holds no checksum" in caplog.text


def test_the_checksum_survives_the_round_trip_of_every_value_kind(tmp_path):
    state = {
        "format": 4,
        "a": torch.arange(6, dtype=torch.bfloat16).view(2, 3).t(),  # a non-contiguous view, a dtype numpy lacks
        "b": [1, 2.5, float("nan"), None, True, "x", (0.9, 0.999)],
        "c": {3: torch.zeros(()), 1: torch.ones(2, dtype=torch.bool)},
    }
    path = tmp_path / "x.ckpt"
    torch.save({**state, "checksum": state_checksum(state)}, path)
    again = torch.load(path, weights_only=True)
    assert again.pop("checksum") == state_checksum(again)


# ---------------------------------------------------------------------------------------------- full disk
@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4480 vs 4371"),
    ],
    ids=["ENOSPC", "zip-writer"],
)
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, failure):
    task, opt = small_task(net_seed=0)
    task.dip_iteration(opt)
    path = tmp_path / "run" / CHECKPOINT
    save_checkpoint(path, {**checkpoint_state(task, task.by_hand(opt).trainable, 0, []), "identity": {}})
    before = path.read_bytes()
    task.dip_iteration(opt)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # some bytes were written before the disk filled up
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DIPError) as err:
        save_checkpoint(path, {**checkpoint_state(task, task.by_hand(opt).trainable, 0, []), "identity": {}})
    text = one_paragraph(err)
    assert path.read_bytes() == before  # the previous checkpoint, byte for byte
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no partial file left beside it
    assert f"Could not write the checkpoint {str(path)!r}" in text and str(failure).split()[0] in text
    assert " free on its disk" in text and "needs about" in text and f"resume={path}" in text, text
    assert load_checkpoint(path)["iteration"] == 1


def test_a_run_whose_disk_fills_up_stops_with_one_paragraph(run_dip, tmp_path, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DIPError) as err:
        run_dip([*RUN, "checkpoint_every=10"], run_dir=tmp_path / "r")
    text = one_paragraph(err)
    assert str(tmp_path / "r" / CHECKPOINT) in text and "No earlier checkpoint" in text


# ---------------------------------------------------------------------------------------- missing fields
def _set(state, key, value):
    *parents, last = key.split(".")
    for p in parents:
        state = state[p]
    if value is DELETE:
        del state[last]
    else:
        state[last] = value


DELETE = object()


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("identity", DELETE, "identity is missing"),
        ("task", DELETE, "task is missing"),
        ("task.net", DELETE, "task.net is missing"),
        ("task.jitter_gen", [1, 2], "task.jitter_gen is a list, not a generator state"),
        ("optimizer", "adam", "optimizer is a str, not the optimizer's state_dict"),
        ("torch_rng", torch.zeros(3), "torch_rng is a torch.float32 tensor, not the RNG state"),
        ("callbacks", [], "callbacks is a list, not the callbacks' states"),
        ("identity", {"seed": 0}, "identity is a dict, not the run's identity"),
        ("iteration", "20", "iteration is a str, not an iteration count"),
        ("iteration", 19, "its task is at iteration 20, the file at 19"),
    ],
)
def test_a_checkpoint_with_a_missing_or_mistyped_field_is_one_paragraph(stopped, tmp_path, key, value, says):
    state = torch.load(stopped, weights_only=True)
    _set(state, key, value)
    torch.save({**state, "checksum": state_checksum(state)}, tmp_path / "odd.ckpt")  # written so, not damaged
    with pytest.raises(DIPError) as err:
        load_checkpoint(tmp_path / "odd.ckpt")
    text = one_paragraph(err)
    assert f"{str(tmp_path / 'odd.ckpt')!r} is not a dip-run checkpoint, or it is damaged: {says}" in text, text


def test_a_format_3_checkpoint_without_its_task_keys_is_one_paragraph(stopped, tmp_path):
    state = torch.load(stopped, weights_only=True)
    del state["checksum"]
    old = {**{k: v for k, v in state.items() if k != "task"}, "format": 3, "net": state["task"]["net"]}
    torch.save(old, tmp_path / "f3.ckpt")
    with pytest.raises(DIPError, match="damaged: buffers is missing; snapshot is missing; jitter_gen is missing"):
        load_checkpoint(tmp_path / "f3.ckpt")


def test_a_callback_state_without_its_keys_is_one_paragraph_on_restore(tmp_path):
    task, opt = small_task(net_seed=0)
    task.dip_iteration(opt)
    from dip_lightning.callbacks.best_iterate import BestIterate

    best = BestIterate()
    best.config_name = "best_iterate"
    state = checkpoint_state(task, task.by_hand(opt).trainable, 0, [best])
    state["callbacks"]["best_iterate"] = {"best_psnr": None}
    with pytest.raises(DIPError) as err:
        restore_checkpoint(task, state, "x.ckpt", task.by_hand(opt).trainable, 0, [best])
    assert "'x.ckpt' does not fit this run, or it is damaged" in one_paragraph(err) and "KeyError" in str(err.value)
