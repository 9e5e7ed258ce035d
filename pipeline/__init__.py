"""ImageNet data pipeline for AlexNet: the sharded dataset format, its reader, and the DALI loader.

    import pipeline
    ds = pipeline.open_dataset("data/imagenet256")
    image, label = ds["train"][0]
"""
__version__ = "0.1.0"

from .load.dataset import Dataset, FormatError, open_dataset  # noqa: E402

__all__ = ["Dataset", "FormatError", "build_loader", "open_dataset", "__version__"]


def build_loader(path, split, **kwargs):
    """The DALI loader (pipeline/load/loader.py); imported lazily so the format needs no DALI/torch."""
    from .load.loader import build_loader as _build

    return _build(path, split, **kwargs)
