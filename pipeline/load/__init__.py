"""Loading: the dataset directory -> batches on the training device.

    dataset.py  the reader: open_dataset(path) checks every file and memory-maps the shards
    sampler.py  which samples each data-parallel rank gets at each step, and every random decision
    augment.py  the augmentation graph as plain DALI functions (crop, flip, lighting, mean)
    graphs.py   the @pipeline_defs (train, val, ten-crop) wiring the named inputs to augment.py
    gather.py   a batch's samples copied by worker threads into a ring of reusable host buffers
    feed.py     the one DALI pipeline of a loader's life, fed batch by batch, batches in flight tagged
    loader.py   build_loader: the iterator over all of it (position, resume, the hand-off to torch)
"""
