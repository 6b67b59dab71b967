"""Image snapshots of the current output to the run's loggers that show images (uint8: wandb renders float images
black)."""

from __future__ import annotations

import numpy as np

from ..data.io import to_uint8
from .roles import RunHook


def log_images(loggers: list, key: str, images: list[np.ndarray], captions: list[str], step: int) -> None:
    """uint8 HxWxC images to every logger that shows images (W&B renders float images black; CSV shows none)."""
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "WandbLogger":
            logger.log_image(key, images=images, caption=captions, step=step)
        elif kind == "TensorBoardLogger":  # no captions there: the tag says what the image is (an oracle's too)
            for image, caption in zip(images, captions):
                logger.experiment.add_image(
                    f"{key}/{caption.split(' @')[0]}" + (" (oracle)" if "(oracle" in caption else ""),
                    image,
                    global_step=step,
                    dataformats="HWC" if image.ndim == 3 else "HW",
                )


class ImageSnapshots(RunHook):
    def __init__(self, every_n_iterations: int = 200):
        self.every = max(int(every_n_iterations), 1)
        self._next = 0

    def on_run_start(self, run) -> None:
        task = run.task
        self._next = (task.iteration // self.every) * self.every
        images = [to_uint8(task.observed_image())]
        if task.clean is not None:
            images.append(to_uint8(task.clean))
        log_images(run.loggers, "inputs", images, ["observed", "clean"][: len(images)], step=task.iteration)

    def on_chunk_end(self, run) -> None:
        # Checked once per chunk: the snapshot is the last output of the chunk that crossed a multiple of `every`.
        task = run.task
        if task.iteration < self._next or not run.loggers:
            return
        self._next = (task.iteration // self.every + 1) * self.every
        images = [to_uint8(task.last_out)]
        captions = [f"output @ {task.iteration - 1}"]
        if task.exp_weight > 0:
            images.append(to_uint8(task.out_avg))
            captions.append(f"averaged @ {task.iteration - 1}")
        log_images(run.loggers, "snapshots", images, captions, step=task.iteration - 1)
