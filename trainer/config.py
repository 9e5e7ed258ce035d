"""One typed config: YAML sets defaults, ``--key=value`` overrides, unknown keys and wrong types fail
loudly (listing the valid keys), and the resolved config is saved with the run."""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from pipeline.errors import UsageError


class ConfigError(UsageError):
    """A config key or value that cannot work (named in the message); also a ValueError."""


@dataclass
class Config:
    # Each key's meaning is written once, in HELP below (the --help text of trainer/main.py).
    # data and run
    data: str = ""
    out: str = "runs/default"
    device: str = "auto"
    seed: int = 0
    # model and layout
    model: str = "alexnet"
    mp: int = 1
    dropout: float = 0.5
    bias_init: float = 1.0
    init: str = "paper"
    dropout_form: str = "inverted"
    # batches and schedule
    batch_size: int = 128
    epochs: int = 90
    max_steps: int = 0
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    label_smoothing: float = 0.0
    weight_decay: float = 5e-4
    bias_lr_mult: float = 1.0
    lr_schedule: str = "plateau"
    lr_factor: float = 0.1
    lr_step_epochs: int = 30
    plateau_patience: int = 1
    plateau_max_cuts: int = 3
    warmup_epochs: float = 0.0
    # augmentation (pipeline.build_loader)
    crop: int = 224
    flip: bool = True
    lighting: float = 0.1
    lighting_form: str = "code"
    mean: str = "pixel"
    # speed
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    loader_threads: int = 0
    data_order: str = "global"
    block_shards: int = 0
    cache_dir: str = ""
    cache_limit: str = ""
    # logging, evaluation, checkpoints
    log_every: int = 10
    stall_steps: int = 3000
    eval_every: int = 1
    ten_crop_eval: bool = False
    ckpt_every_steps: int = 0
    keep_last: int = 2
    keep_epochs: list = dataclasses.field(default_factory=list)
    override_config: bool = False

    def validate(self) -> None:
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if not self.data:
            raise ConfigError("data is required: a dataset directory from tools/prepare_imagenet.py")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ConfigError(f"out: {self.out} exists and is a file; out is the run directory")
        if self.mp not in (1, 2):
            raise ConfigError(f"mp must be 1 or 2, got {self.mp}")
        from .models import SPLITTABLE, names
        if self.model not in names():
            raise ConfigError(f"unknown model {self.model!r}; choose one of {names()}")
        if self.model in SPLITTABLE and self.crop >= 1:
            from .models.alexnet import _feature_size
            if _feature_size(SPLITTABLE[self.model]["convs"], self.crop) < 1:
                raise ConfigError(f"crop {self.crop} px is too small for {self.model}: its convolutions "
                                  f"and pools leave no pixel")
        if self.mp == 2 and self.model not in SPLITTABLE:
            raise ConfigError(f"model {self.model!r} cannot be split across ranks: mp=2 is only "
                              f"for {sorted(SPLITTABLE)}")
        for key in ("batch_size", "crop", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if (self.init, self.dropout_form) != ("paper", "inverted") and self.model not in SPLITTABLE:
            raise ConfigError(f"init and dropout_form are the paper AlexNet's ({sorted(SPLITTABLE)}); "
                              f"{self.model} uses its own published init and torch's dropout")
        if self.bias_lr_mult <= 0:
            raise ConfigError(f"bias_lr_mult must be > 0, got {self.bias_lr_mult}")
        for key in ("epochs", "max_steps", "eval_every", "ckpt_every_steps", "lr_step_epochs",
                    "loader_threads", "plateau_patience", "plateau_max_cuts", "keep_last",
                    "stall_steps", "block_shards"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.epochs == 0 and self.max_steps == 0:
            raise ConfigError("set epochs or max_steps (both 0 would train forever)")


CHOICES = {"device": ("auto", "cpu", "cuda"), "lr_schedule": ("plateau", "step", "cosine"),
           "lighting_form": ("code", "paper"), "mean": ("pixel", "channel", "none"),
           "precision": ("fp32", "bf16", "fp16"), "init": ("paper", "code2012", "caffe"),
           "dropout_form": ("inverted", "paper"), "data_order": ("global", "block")}

# --help: every key of Config, grouped, with one line of meaning (tests/test_cli.py checks that
# every field is here).
HELP = {
    "data": {
        "data": "dataset directory written by tools/prepare_imagenet.py, or its copy in a bucket: "
                "s3://bucket/prefix (any fsspec URL; AWS_ENDPOINT_URL etc. as for the AWS CLI)",
        "cache_dir": "node-local cache of a dataset in a bucket (default ~/.cache/alexnet-pipeline/shards)",
        "cache_limit": "bytes the cache may hold, e.g. 64G (default: no limit, the whole split)",
        "data_order": "global: one permutation of the split; block: shards permuted, in blocks that "
                      "fit the cache, samples shuffled within a block (for a cache_limit < the split)",
        "block_shards": "shards a block in block order (0: half of what cache_limit holds)",
        "crop": "side of the random (train) and centre (val) crop in pixels: 224, or 227 without padding",
        "flip": "random horizontal flip, p=0.5",
        "lighting": "PCA lighting: std of alpha (paper: 0.1; 0 = off)",
        "lighting_form": "code: scale by sqrt(eigval) (2012 source, ~12 grey levels); paper: by eigval/255",
        "mean": "subtract the mean image (pixel), the per-channel mean (channel) or nothing (none)",
        "loader_threads": "loader (gather and DALI) threads per rank; 0 = the CPUs of this process's "
                          "affinity shared among the node's ranks, at most 8 (logged at start)",
        "seed": "seed of the data order, the augmentation and the weight initialisation",
    },
    "model": {
        "model": "alexnet (paper, two towers), alexnet_owt, vgg16, resnet50, or a small-input variant",
        "mp": "model-parallel ranks: 2 puts alexnet's towers on a pair of ranks; world = dp x mp",
        "dropout": "dropout probability of fc6 and fc7",
        "bias_init": "bias of conv2/4/5 and fc6/7 (paper: 1; Caffe used 0.1)",
        "init": "alexnet weight stds: paper (0.01 everywhere), code2012 (conv3-5 0.03), caffe (fc6/7 0.005)",
        "dropout_form": "alexnet dropout: inverted (torch: x 1/(1-p) in training) or paper (x (1-p) at test)",
    },
    "optimisation": {
        "batch_size": "global batch size over the data-parallel ranks",
        "lr": "learning rate (SGD)",
        "momentum": "SGD momentum",
        "nesterov": "Nesterov momentum",
        "weight_decay": "L2 weight decay on weights (not biases)",
        "bias_lr_mult": "biases learn at lr x this (cuda-convnet and Caffe: 2)",
        "label_smoothing": "label smoothing of the cross-entropy; 0 = the paper's plain loss",
    },
    "schedule": {
        "epochs": "epochs to train",
        "max_steps": "stop after this many steps; 0 = no limit",
        "lr_schedule": "plateau: cut when val top-1 stops improving; step: every lr_step_epochs; cosine",
        "lr_factor": "plateau and step: multiply the rate by this at each cut",
        "lr_step_epochs": "step: epochs between cuts",
        "plateau_patience": "plateau: epochs without val top-1 improvement before a cut",
        "plateau_max_cuts": "plateau: at most this many cuts (the paper: 3)",
        "warmup_epochs": "linear warm-up from 0, in epochs (fractions allowed)",
    },
    "precision": {
        "precision": "fp32, bf16 autocast, or fp16 autocast with a grad scaler (CUDA only)",
        "channels_last": "NHWC memory format for images and weights",
        "compile": "torch.compile the model",
        "device": "auto (cuda when available), cpu or cuda",
    },
    "checkpoints": {
        "out": "run directory: config.yaml, metrics.jsonl, checkpoints/, curves.png; reused to resume",
        "ckpt_every_steps": "also checkpoint every this many steps; 0 = only at epoch ends",
        "keep_last": "epoch checkpoints kept besides latest.pt and the best by val top-1",
        "keep_epochs": "epochs whose checkpoints are kept for good, e.g. 29,59",
        "override_config": "resume even though the config differs from the checkpoint's",
    },
    "logging": {
        "log_every": "log loss, lr, images/s and ETA every this many steps",
        "stall_steps": "warn once if the loss is not below 0.98 ln C by this step (0 = never)",
        "eval_every": "evaluate on val every this many epochs; 0 = never",
        "ten_crop_eval": "also evaluate ten-crop (the paper's test protocol) at each evaluation",
    },
}


def cli_options() -> list:
    """Every config key as a command-line option (pipeline/cli.py), grouped as in HELP."""
    from pipeline.cli import Option

    types = {"int": int, "float": float, "str": str, "bool": bool, "list": list}
    by_name = {f.name: f for f in fields(Config)}
    options = []
    placed = [(group, name, meaning) for group, keys in HELP.items() for name, meaning in keys.items()
              if name in by_name]
    placed += [("other", name, "") for name in by_name if not any(name == p[1] for p in placed)]
    for group, name, meaning in placed:
        f = by_name[name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        options.append(Option(name, types[f.type], default, meaning=meaning, group=group,
                              choices=CHOICES.get(name, ())))
    return options


# Changing these on resume cannot change what was already trained. ``out`` and ``data`` are
# paths, not identities: the run is the directory the checkpoint was found in, the dataset is
# compared by content (check_resume). ``mp`` (and the world size, which is torchrun's) is a layout:
# the same global batch gives the same training on any dp x mp (README, Training).
RESUMABLE_CHANGES = {"epochs", "max_steps", "log_every", "eval_every", "ckpt_every_steps",
                     "override_config", "stall_steps", "loader_threads", "keep_last", "keep_epochs", "ten_crop_eval",
                     "cache_dir", "cache_limit",
                     "out", "data", "mp"}
# The checkpoint cannot be loaded into another network: never overridable.
STRUCTURAL = {"model"}


FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(name: str, kind, value):
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    elif kind is str:
        if isinstance(value, str):
            return value
    elif kind is list:  # of ints: fire gives an int for --k=3 and a tuple for --k=3,5
        items = [value] if isinstance(value, int) else value
        if isinstance(items, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                    for v in items):
            return sorted(set(items))
        raise ConfigError(f"{name} must be a list of integers, got {value!r}")
    raise ConfigError(f"{name} must be {kind.__name__}, got {value!r} ({type(value).__name__})")


def make_config(path: str | None = None, **overrides) -> Config:
    """Defaults <- YAML file <- overrides; every key checked by name and type."""
    values = {}
    if path:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read config ({e})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        values.pop("recipe", None)  # what a recipe reproduces: for people and tests, not a setting
    kinds = {f.name: f.type for f in fields(Config)}
    types = {"int": int, "float": float, "str": str, "bool": bool, "list": list}
    for where, given in ((f"in {path}", values), ("on the command line", overrides)):
        unknown = sorted(set(given) - set(kinds))
        if unknown:
            close = {k: difflib.get_close_matches(k, list(kinds), n=1) for k in unknown}
            hints = "; ".join(f"did you mean {c[0]!r} for {k!r}?" for k, c in close.items() if c)
            raise ConfigError(f"unknown config keys {unknown} {where}{'; ' + hints if hints else ''}; "
                              f"valid keys: {', '.join(sorted(kinds))}")
    values.update(overrides)
    cfg = Config(**{k: _coerce(k, types[kinds[k]], v) for k, v in values.items()})
    cfg.validate()
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def dataset_identity(ds) -> dict:
    """What the dataset is, wherever it lies: manifest.json lists every shard's and the statistics'
    sha256, so its own sha256 names the content (a moved, copied or uploaded dataset keeps it).
    ``ds``: the open pipeline.Dataset (a directory's or a bucket's)."""
    return {"manifest_sha256": ds.manifest_sha256}


def check_resume(saved: dict, cfg: Config, saved_dataset: dict | None = None,
                 dataset: dict | None = None) -> list[str]:
    """Keys that differ from the checkpoint's config and matter; raise unless overridden.

    ``--override_config`` accepts changed hyper-parameters, never another dataset (by content) or
    another model: those checkpoints cannot continue this run."""
    if saved_dataset is not None and dataset is not None and saved_dataset != dataset:
        raise ConfigError(f"{cfg.data} is not the dataset {cfg.out} was trained on (manifest.json "
                          f"sha256 {dataset['manifest_sha256'][:12]}..., the run's "
                          f"{saved_dataset['manifest_sha256'][:12]}...); a moved or copied dataset "
                          f"resumes, another one needs another out")
    now = to_dict(cfg)
    # a checkpoint written before a key existed ran with that key's default
    saved = {**to_dict(Config(data="-")), **saved}
    structural = sorted(k for k in STRUCTURAL if k in saved and saved[k] != now.get(k))
    if structural:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in structural)
        raise ConfigError(f"{cfg.out} holds a run of another network ({diffs}); use another out")
    changed = sorted(k for k in set(saved) | set(now)
                     if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
    if changed and not cfg.override_config:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError(f"{cfg.out} holds a run with another config ({diffs}); use another out, "
                          f"or pass --override_config=True to resume with the new values")
    return changed
