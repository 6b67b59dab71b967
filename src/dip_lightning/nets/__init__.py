from .base import Generator
from .inputs import make_input
from .skip import Skip

__all__ = ["Generator", "Skip", "make_input"]
