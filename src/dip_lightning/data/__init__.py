from .datamodule import ImageData, SingleImageDataModule
from .io import read_image, write_image, write_json

__all__ = ["ImageData", "SingleImageDataModule", "read_image", "write_image", "write_json"]
