from .best_iterate import BestIterate
from .progress import DIPProgress
from .snapshots import ImageSnapshots

__all__ = ["BestIterate", "DIPProgress", "ImageSnapshots"]
