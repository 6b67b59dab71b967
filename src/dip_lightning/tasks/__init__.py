from .base import DIPTask, Iteration
from .denoising import Denoising

__all__ = ["DIPTask", "Iteration", "Denoising"]
