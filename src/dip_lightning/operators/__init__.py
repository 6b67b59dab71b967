from .base import Identity, Operator
from .linear import Blur, Downsample, Mask
from .nonlinear import JPEG, Features

__all__ = ["Operator", "Identity", "Mask", "Downsample", "Blur", "JPEG", "Features"]
