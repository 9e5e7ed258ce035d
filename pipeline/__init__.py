"""ImageNet data pipeline for AlexNet: the sharded dataset format, its reader, and the DALI loader.

    import pipeline
    ds = pipeline.open_dataset("data/imagenet256")
    image, label = ds["train"][0]
"""
__version__ = "0.1.0"

from .dataset import Dataset, FormatError, open_dataset  # noqa: E402

__all__ = ["Dataset", "FormatError", "open_dataset", "__version__"]
