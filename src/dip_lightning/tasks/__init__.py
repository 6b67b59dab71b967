from ..callbacks.roles import Iteration
from .base import DIPTask
from .deblurring import Deblurring
from .denoising import Denoising
from .features import ActivationMaximization, FeatureInversion
from .flash_no_flash import FlashNoFlash
from .inpainting import Inpainting, Restoration
from .jpeg import JPEGRestoration
from .super_resolution import SuperResolution

__all__ = [
    "DIPTask",
    "Iteration",
    "Denoising",
    "SuperResolution",
    "Inpainting",
    "Restoration",
    "FlashNoFlash",
    "JPEGRestoration",
    "Deblurring",
    "FeatureInversion",
    "ActivationMaximization",
]
