"""The loader benchmark's own DALI graphs over the loader's feed (pipeline.build_loader(graph=...)):
the feed alone, without the augmentation."""
from __future__ import annotations

from nvidia.dali import pipeline_def

from pipeline.load.graphs import images_input, labels_input


@pipeline_def
def feed_pipeline(*, device):
    """No augmentation: the gathered raw batch and labels as DALI hands them over (benchmark of
    the feed alone). DALI's output stage copies the batch out of the ring (measured: an output
    never aliases a no_copy input), so a yielded batch stays valid after its slot is refilled."""
    return images_input(device, "raw"), labels_input(device)


@pipeline_def
def handoff_pipeline(*, device):
    """The feed without that output copy (benchmark of the gather and the hand-off alone): the
    batch is handed to DALI and read in place, as crop_mirror_normalize reads it in training; only
    each sample's shape (int64 (B, 3)) comes out, so the benchmark can check what was fed."""
    return images_input(device, "raw").shape(), labels_input(device)
