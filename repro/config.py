"""The training configuration: one typed dataclass, every field overridable from the command line.

Plain fields: ``--lr 0.05``, ``--epochs 10``, ``--neuron plif``.  Option dictionaries take dotted
keys: ``--surrogate.width 0.5``, ``--neuron.decay 0.2``, ``--model.width 0.25``,
``--loss.label_smoothing 0.1``, ``--dataset.augment false``; values are parsed as Python or
JSON literals, else kept as strings.  Choosing another model, neuron, surrogate, loss or dataset
than the recipe's drops the recipe's options for it (they were meant for its own choice).  ``--smoke`` swaps in the embedded dataset of the same
modality with a tiny budget (same code path, well under a minute).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import typing
from dataclasses import dataclass, field

OPTION_GROUPS = ("model", "neuron", "surrogate", "loss", "dataset")


@dataclass
class Config:
    # model and method
    model: str = field(default="resnet19", metadata={"help": "model name (repro.models.MODELS)"})
    num_steps: int = field(default=4, metadata={"help": "timesteps T"})
    neuron: str = field(default="lif", metadata={"help": "neuron name (repro.models.NEURONS)"})
    surrogate: str = field(default="atan", metadata={"help": "surrogate name (repro.surrogates.SURROGATES)"})
    loss: str = field(default="ce", metadata={"help": "loss name (repro.losses.LOSSES)"})
    model_options: dict = field(default_factory=dict, metadata={"help": "extra model kwargs, --model.KEY VALUE"})
    neuron_options: dict = field(default_factory=dict, metadata={"help": "neuron kwargs, --neuron.KEY VALUE"})
    surrogate_options: dict = field(default_factory=dict, metadata={"help": "surrogate kwargs, --surrogate.KEY VALUE"})
    loss_options: dict = field(default_factory=dict, metadata={"help": "loss kwargs, --loss.KEY VALUE"})
    # data
    dataset: str = field(default="digits", metadata={"help": "dataset name (repro.datasets.DATASETS)"})
    data_root: str = field(default="data", metadata={"help": "where datasets are stored / downloaded to"})
    download: bool = field(default=False, metadata={"help": "allow downloading missing datasets"})
    dataset_options: dict = field(default_factory=dict, metadata={"help": "dataset kwargs, --dataset.KEY VALUE"})
    batch_size: int = field(default=128, metadata={"help": "per-process training batch size"})
    eval_batch_size: int = field(default=256, metadata={"help": "per-process evaluation batch size"})
    num_workers: int = field(default=-1, metadata={"help": "DataLoader workers; -1 = automatic"})
    pin_memory: bool = field(default=True, metadata={"help": "pin host memory (only used with a GPU)"})
    persistent_workers: bool = field(default=True, metadata={"help": "keep workers alive across epochs"})
    # optimisation
    epochs: int = field(default=300, metadata={"help": "training epochs"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd | adamw"})
    lr: float = field(default=0.1, metadata={"help": "peak learning rate"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    nesterov: bool = field(default=False, metadata={"help": "SGD Nesterov momentum"})
    betas: tuple = field(default=(0.9, 0.999), metadata={"help": "AdamW betas"})
    weight_decay: float = field(default=5e-4, metadata={"help": "weight decay"})
    no_decay_norm_bias: bool = field(default=False, metadata={"help": "exclude norm weights and biases from weight decay"})
    schedule: str = field(default="cosine", metadata={"help": "cosine | constant (stepped per epoch)"})
    warmup_epochs: int = field(default=0, metadata={"help": "linear warm-up epochs"})
    warmup_lr: float = field(default=0.0, metadata={"help": "learning rate at the start of warm-up"})
    min_lr: float = field(default=0.0, metadata={"help": "final learning rate of the cosine schedule"})
    grad_accumulation: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    grad_clip: float = field(default=0.0, metadata={"help": "clip the gradient norm (0 = off)"})
    nonfinite: str = field(default="stop", metadata={"help": "on a non-finite loss or gradient: stop | skip (the step)"})
    sync_bn: bool = field(default=False, metadata={"help": "all-reduce BN batch statistics across processes"})
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16 (neuron maths stays fp32)"})
    # run
    seed: int = field(default=2025, metadata={"help": "random seed"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model in place (inductor)"})
    output_dir: str = field(default="runs/default", metadata={"help": "run directory"})
    pretrained: str = field(default="", metadata={"help": "checkpoint to start from (segmentation: the encoder)"})
    resume: bool = field(default=False, metadata={"help": "resume from OUTPUT_DIR/checkpoint.pt"})
    tensorboard: bool = field(default=False, metadata={"help": "log to tensorboard through accelerate"})
    diagnostics_every: int = field(default=0, metadata={"help": "every N epochs write diagnostics/epoch_N.json "
                                                                 "(window occupancy, histograms, energy); 0 = off"})
    diagnostics_batches: int = field(default=4, metadata={"help": "test batches used by the diagnostics"})
    limit_train_batches: int = field(default=0, metadata={"help": "batches per training epoch (0 = all)"})
    limit_eval_batches: int = field(default=0, metadata={"help": "batches per evaluation (0 = all)"})
    smoke: bool = field(default=False, metadata={"help": "tiny end-to-end run on the embedded dataset"})
    vanilla: bool = field(default=False, metadata={"help": "the recipe's vanilla baseline: its method switched off"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}")
        values = dict(values)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


def _parse_literal(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            return json.loads(text)
        except ValueError:
            return text


def _field_parser(annotation):
    origin = typing.get_origin(annotation) or annotation
    if annotation in (bool, "bool"):
        def parse_bool(text):
            value = _parse_literal(text)
            if not isinstance(value, bool):
                raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
            return value
        return parse_bool
    if annotation in (int, "int"):
        return int
    if annotation in (float, "float"):
        return float
    if annotation in (str, "str"):
        return str
    if origin in (dict, tuple, "dict", "tuple"):
        return _parse_literal
    return str


def parse_args(defaults: Config, argv: list[str] | None = None, description: str | None = None) -> Config:
    """Override ``defaults`` (a recipe's config) from the command line and return a new Config."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(Config):
        kind = _field_parser(f.type)
        if kind is not None and f.type in (bool, "bool"):
            parser.add_argument(f"--{f.name}", type=kind, nargs="?", const=True, default=getattr(defaults, f.name),
                                help=f.metadata.get("help"))
        else:
            parser.add_argument(f"--{f.name}", type=kind, default=getattr(defaults, f.name), help=f.metadata.get("help"))
    args, rest = parser.parse_known_args(argv)
    values = vars(args)
    for group in OPTION_GROUPS:
        options = dict(values[f"{group}_options"])
        if values[group] != getattr(defaults, group) and options == getattr(defaults, f"{group}_options"):
            options = {}  # the recipe's options belong to the recipe's choice: a new --surrogate starts afresh
        values[f"{group}_options"] = options
    i = 0
    while i < len(rest):
        token = rest[i]
        key, _, inline = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        group, _, option = key.partition(".")
        if group not in OPTION_GROUPS or not option:
            parser.error(f"unrecognised argument {token!r}; option groups are "
                         + ", ".join(f"--{g}.KEY VALUE" for g in OPTION_GROUPS))
        if not inline:
            if i + 1 >= len(rest):
                parser.error(f"{token} needs a value")
            inline, i = rest[i + 1], i + 1
        values[f"{group}_options"][option] = _parse_literal(inline)
        i += 1
    return Config.from_dict(values)


def apply_smoke(config: Config, embedded_dataset: str, **overrides) -> Config:
    """The same run shrunk to seconds on an embedded dataset (for tests and first-time users);
    ``overrides`` (a recipe's smoke settings, e.g. a narrower model) are applied last."""
    return dataclasses.replace(
        config, dataset=embedded_dataset, dataset_options={}, epochs=1, batch_size=8, eval_batch_size=16,
        limit_train_batches=2, limit_eval_batches=1, warmup_epochs=0, **overrides,
    )
