"""Preemption and resume: the whole DIP state in one file, written atomically, and read back bit for bit.

A checkpoint holds what the next iteration depends on, each part as its owner gives it: the task's `run_state()`
(net weights, averaged and last output, backtracking state and snapshot, iteration count, the jitter generator's
state, the history), the optimizer's state_dict, the process's RNG state, and the `state_dict()` of every on-device
callback (best iterate, early stopping) under its config name, and the ids of the loggers' runs (W&B's: a resume
continues that run). This module only assembles the file: its format, the run's identity (checked on resume) and
the atomic write. With it, a resumed run on CPU with the same config ends bit-identical to one that was never
interrupted.

Checkpoints are written at chunk ends by the loop (loop/engine.py): at every multiple of `checkpoint_every` (off by
default; a chunk ends at each, data/schedule.py), and always when the process gets SIGTERM (SLURM preemption) or
Ctrl-C (`SignalGuard`), after which the run stops with `Interrupted`. A packed run's checkpoint has the unpacked
format, so it resumes packed or not.

What a resume refuses, each with one paragraph (a DIPError) naming the file: a file that is not a checkpoint or
lacks one of its fields (`_check_fields`); a damaged one, whose content no longer matches the sha256 written with
it (`state_checksum`: a bit flipped on disk); another run's (its identity, identity.py), including other
stopping rules; one written by other code (the package version or source hash differ) unless `resume_force=true`.
A checkpoint that cannot be written (a full disk) is one paragraph too, and leaves the previous one as it was.
"""

from .file import CHECKPOINT, FORMAT, find_checkpoint, load_checkpoint, save_checkpoint, state_checksum, verify_checksum
from .signals import Interrupted, SignalGuard
from .state import Checkpointing, check_resume, checkpoint_state, logger_ids, restore_checkpoint

__all__ = [
    "CHECKPOINT",
    "FORMAT",
    "Checkpointing",
    "Interrupted",
    "SignalGuard",
    "check_resume",
    "checkpoint_state",
    "find_checkpoint",
    "logger_ids",
    "load_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
    "state_checksum",
    "verify_checksum",
]
