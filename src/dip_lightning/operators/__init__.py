from .base import Identity, Operator

__all__ = ["Operator", "Identity"]
