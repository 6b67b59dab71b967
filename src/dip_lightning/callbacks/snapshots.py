"""Image snapshots of the current output to the loggers that show images (uint8: wandb renders float images
black)."""

from __future__ import annotations

from pytorch_lightning import Callback

from ..data.io import to_uint8
from ..loggers import log_images


class ImageSnapshots(Callback):
    def __init__(self, every_n_iterations: int = 200):
        self.every = max(int(every_n_iterations), 1)
        self._next = 0

    def on_train_start(self, trainer, task) -> None:
        self._next = (task.iteration // self.every) * self.every
        images = [to_uint8(task.observed_image())]
        if task.clean is not None:
            images.append(to_uint8(task.clean))
        log_images(trainer.loggers, "inputs", images, ["observed", "clean"][: len(images)], step=task.iteration)

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        # Checked once per chunk: the snapshot is the last output of the chunk that crossed a multiple of `every`.
        if task.iteration < self._next or not trainer.loggers:
            return
        self._next = (task.iteration // self.every + 1) * self.every
        images = [to_uint8(task.last_out)]
        captions = [f"output @ {task.iteration - 1}"]
        if task.exp_weight > 0:
            images.append(to_uint8(task.out_avg))
            captions.append(f"averaged @ {task.iteration - 1}")
        log_images(trainer.loggers, "snapshots", images, captions, step=task.iteration - 1)
