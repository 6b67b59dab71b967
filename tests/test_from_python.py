"""A task is the LightningModule a plain Trainer fits: the README's "From Python" block runs as written and
restores the image; the Trainer's Lightning callbacks are called, its DIP callbacks used, and ckpt_path= is refused
with the way a DIP run resumes."""

import functools
import re

import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO

from dip_lightning.callbacks.discrepancy import Discrepancy
from dip_lightning.checkpoint import Checkpointing
from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.errors import DIPError
from dip_lightning.nets.skip import Skip
from dip_lightning.tasks import Denoising


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## From Python") : text.index("## Map")]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return block


def test_the_readme_example_restores_the_image_with_a_plain_trainer(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Lightning writes nothing here (no logger, no checkpoints), but it may try
    scope: dict = {}
    exec(compile(readme_block(), "README.md", "exec"), scope)
    task = scope["task"]
    line = capsys.readouterr().out.strip().splitlines()[-1]  # after Lightning's summary and progress bar
    assert line.startswith("input ") and "result" in line
    assert task.iteration == 300 and len(task.history["loss"]) == 300  # max_steps counts DIP iterations
    observed, result = task.observed_psnr(), task.score(task.restored())
    assert result > observed + 3  # restored by a margin: 21.1 -> about 25.8 dB on this crop
    assert 0 <= int(task.best.best_step) < 300 and float(task.best.best_psnr) > observed + 3


def small_task(**kwargs):
    torch.manual_seed(0)
    net = Skip(num_channels_down=[8, 8], num_channels_up=[8, 8], num_channels_skip=[2, 2], input_depth=4)
    return Denoising(net, functools.partial(torch.optim.Adam, lr=0.01), sigma=25, **kwargs)


def trainer(**kwargs):
    opts = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return pl.Trainer(**{**opts, **kwargs})


class Counting(pl.Callback):
    def __init__(self):
        self.batches = self.started = self.ended = 0

    def on_train_start(self, trainer, pl_module):
        self.started += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def on_train_end(self, trainer, pl_module):
        self.ended += 1


def test_the_trainers_lightning_callbacks_are_called_and_its_dip_rules_choose_the_result():
    seen, rule = Counting(), Discrepancy(patience=20)
    task = small_task()
    dm = SingleImageDataModule(observed="astronaut", crop=32, iterations=120, chunk=10)
    trainer(max_steps=-1, callbacks=[seen, rule]).fit(task, datamodule=dm)
    assert seen.started == seen.ended == 1 and seen.batches == len(task.history["loss"]) // 10
    assert task.iteration <= 120 and task.clean is None  # no ground truth: the rule's choice is the result
    chosen = rule.stop_result(task)
    assert chosen is not None and torch.equal(task.restored(), chosen["image"].to(task.device))
    assert task.best is not None and task.best.best_psnr is None  # nothing to rank without a ground truth


def test_a_run_with_checkpointing_resumes_through_its_callback_and_ckpt_path_is_refused(tmp_path):
    dm = SingleImageDataModule(image="astronaut", crop=32, iterations=40, chunk=10)
    first = small_task()
    trainer(max_steps=20, callbacks=[Checkpointing(tmp_path, every=10, iterations=40)]).fit(first, datamodule=dm)
    assert first.iteration == 20 and (tmp_path / "checkpoints" / "last.ckpt").is_file()

    later = small_task()
    resume = Checkpointing(tmp_path, every=10, resume_from=tmp_path / "checkpoints" / "last.ckpt", iterations=40)
    trainer(callbacks=[resume]).fit(later, datamodule=dm)
    whole = small_task()
    trainer().fit(whole, datamodule=dm)
    assert later.iteration == whole.iteration == 40
    assert later.history["loss"] == whole.history["loss"]  # resumed bit for bit
    lightning_checkpoint = tmp_path / "lightning.ckpt"
    pl_trainer = trainer(max_steps=10)
    pl_trainer.fit(small_task(), datamodule=dm)
    pl_trainer.save_checkpoint(lightning_checkpoint)
    with pytest.raises(DIPError, match="resumes from its own checkpoint"):
        trainer(max_steps=20).fit(small_task(), datamodule=dm, ckpt_path=str(lightning_checkpoint))


def test_a_task_without_data_says_how_to_give_it():
    with pytest.raises(DIPError, match="fit it with a data module"):
        trainer(max_steps=5).fit(small_task(), train_dataloaders=[1, 1])
