from .inputs import make_input
from .skip import Skip

__all__ = ["Skip", "make_input"]
