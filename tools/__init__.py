"""The commands (prepare_imagenet, inspect_dataset, export_ffcv, benchmark, demo) and what only
they need: the strict CLI edge (cli.py), generated data (synthetic.py), sample grids (grids.py) and
the benchmark harnesses (bench/). The library they stand on is ``pipeline``; the trainer is
``trainer``."""
