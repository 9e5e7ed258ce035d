"""Preparation: an image source -> the dataset directory (tools/prepare_imagenet.py is its CLI).

    sources/      recognise a layout in SRC and list its inputs (ILSVRC tars, folders, IDX, CIFAR)
    preprocess.py the one preprocessing function: decode, RGB, short side to SIZE, centre crop
    stats.py      exact train-set statistics (mean image, channel moments, RGB eigen-decomposition)
    writer.py     one shard: temporary name, header last, fsync, rename
    convert.py    the resumable, multi-process conversion that ties them together
"""
