"""Loading: the dataset directory -> batches on the training device.

    dataset.py  the reader: open_dataset(path) checks every file and memory-maps the shards
    sampler.py  which samples each data-parallel rank gets at each step, and every random decision
    augment.py  the augmentation graph as plain DALI functions (crop, flip, lighting, mean)
    loader.py   build_loader: the DALI pipeline fed from the reader
"""
