"""The training configuration: one typed dataclass; every field can be set from a file and the command line.

Precedence, lowest first: the recipe's ``Config`` -> ``--config FILE`` (JSON or YAML, e.g. a run's
``config.json``: a resolved config, so its ``vanilla``/``smoke`` changes are not re-applied) ->
``--vanilla`` / ``--smoke`` given on the command line -> every other flag on the command line.

Plain fields: ``--lr 0.05`` (or ``--lr=0.05``; ``--output-dir`` spells ``--output_dir``).  Option
dictionaries take dotted keys: ``--surrogate.width 0.5``, ``--neuron.decay 0.2``, ``--model.width 0.25``,
``--loss.label_smoothing 0.1``, ``--dataset.augment false``; their values are parsed as Python or JSON
literals, else kept as strings, and checked against the option's type when the run is built.  Choosing
another model, neuron, surrogate, loss or dataset than the recipe's drops the recipe's options for it
(they were meant for its own choice).  ``--smoke`` swaps in the embedded dataset of the same modality with
a tiny budget and its own output directory; flags given explicitly still win.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

OPTION_GROUPS = ("model", "neuron", "surrogate", "loss", "dataset")


class ConfigError(ValueError):
    """A setting the user can fix; the command line prints its message as one line."""


@dataclass
class Config:
    # model and method
    model: str = field(default="resnet19", metadata={"help": "model name (repro.models.MODELS)"})
    num_steps: int = field(default=4, metadata={"help": "timesteps T"})
    neuron: str = field(default="lif", metadata={"help": "neuron name (repro.models.NEURONS)"})
    surrogate: str = field(default="atan", metadata={"help": "surrogate name (repro.surrogates.SURROGATES)"})
    loss: str = field(default="ce", metadata={"help": "loss name (repro.losses.LOSSES)"})
    model_options: dict = field(default_factory=dict, metadata={"help": "extra model kwargs"})
    neuron_options: dict = field(default_factory=dict, metadata={"help": "neuron kwargs"})
    surrogate_options: dict = field(default_factory=dict, metadata={"help": "surrogate kwargs"})
    loss_options: dict = field(default_factory=dict, metadata={"help": "loss kwargs"})
    # data
    dataset: str = field(default="digits", metadata={"help": "dataset name (repro.datasets.DATASETS)"})
    data_root: str = field(default="data", metadata={"help": "where datasets are stored / downloaded to"})
    download: bool = field(default=False, metadata={"help": "allow downloading missing datasets"})
    dataset_options: dict = field(default_factory=dict, metadata={"help": "dataset kwargs"})
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
    mixed_precision: str | None = field(default=None, metadata={
        "help": "no | fp16 | bf16 (neuron maths stays fp32); unset: accelerate's own setting (accelerate launch "
                "--mixed_precision, accelerate config, ACCELERATE_MIXED_PRECISION), else no"})
    # run
    seed: int = field(default=2025, metadata={"help": "random seed"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model in place (inductor)"})
    output_dir: str = field(default="runs/default", metadata={"help": "run directory"})
    pretrained: str = field(default="", metadata={"help": "checkpoint to start from (segmentation: the encoder)"})
    resume: bool = field(default=False, metadata={"help": "resume from OUTPUT_DIR/checkpoint.pt"})
    report_to: str = field(default="none", metadata={"help": "experiment trackers through accelerate: none | "
                                                         "tensorboard | wandb | mlflow | all, or a comma list"})
    log_every: int = field(default=50, metadata={"help": "off a terminal, log loss, lr, images/s and firing rate every "
                                                     "N training steps (0 = off); on a terminal a progress bar"})
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
    def from_dict(cls, values: dict, source: str = "config") -> "Config":
        """A Config from plain values (a JSON/YAML file, a checkpoint); strings are parsed by the field's type."""
        types = field_types()
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}; valid fields: {sorted(types)}")
        return cls(**{name: coerce(name, value, types[name]) for name, value in values.items()})


def field_types() -> dict[str, type]:
    return typing.get_type_hints(Config)


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


BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def coerce(name: str, value, kind):
    """``value`` (a string from the command line or a file's value) as type ``kind``, or a ConfigError naming
    the option, the value and what is allowed."""
    def fail(allowed: str):
        return ConfigError(f"--{name} {value!r} is not valid: expected {allowed}")

    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # Optional[...]: None or the other type
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in BOOL_WORDS:
            return BOOL_WORDS[value.lower()]
        raise fail("true or false")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise fail("an integer")
        try:
            return int(value)
        except ValueError:
            raise fail("an integer") from None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise fail("a finite number")
        try:
            number = float(value)
        except ValueError:
            raise fail("a finite number") from None
        if not math.isfinite(number):
            raise fail("a finite number")
        return number
    if kind is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    parsed = _parse_literal(value) if isinstance(value, str) else value
    if typing.get_origin(kind) is dict or kind is dict:
        if not isinstance(parsed, dict):
            raise fail("a dictionary (or --GROUP.KEY VALUE flags)")
        return parsed
    if not isinstance(parsed, (list, tuple)):
        raise fail("a sequence such as (0.9, 0.999)")
    return tuple(parsed)


def load_config_file(path: str) -> dict:
    """Field values from a JSON (``.json``) or YAML (``.yaml``/``.yml``) file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = file.read_text()
    try:
        if file.suffix == ".json":
            values = json.loads(text)
        elif file.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            raise ConfigError(f"--config {path}: expected a .json, .yaml or .yml file")
    except ConfigError:
        raise
    except Exception as error:  # json.JSONDecodeError, yaml.YAMLError
        raise ConfigError(f"--config {path} could not be read: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must hold a mapping of field names to values")
    return values


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (the full usage of ~60 options would bury them)."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see --help)")


def build_parser(defaults: Config, description: str | None = None) -> argparse.ArgumentParser:
    """Flags for every plain field (``--name`` and ``--name-with-dashes``), ``--config`` and ``--debug``;
    option dictionaries are read as ``--GROUP.KEY VALUE`` and listed in their own help section."""
    parser = _OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                            allow_abbrev=False)  # the recipe docstring keeps its line breaks
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="JSON or YAML file of fields (e.g. a run's config.json); flags given here override it")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of errors (default: one line)")
    types = field_types()
    for f in dataclasses.fields(Config):
        if f.name.endswith("_options"):
            continue
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        extra = {"nargs": "?", "const": "true"} if types[f.name] is bool else {}  # "--download" alone is true
        parser.add_argument(*names, dest=f.name, metavar=f.name.upper(), default=argparse.SUPPRESS,
                            help=f"{f.metadata.get('help', '')} (recipe: {getattr(defaults, f.name)!r})", **extra)
    groups = parser.add_argument_group("option dictionaries (repeat for several keys)")
    for group in OPTION_GROUPS:
        recipe = getattr(defaults, f"{group}_options")
        groups.add_argument(f"--{group}.KEY", metavar="VALUE", default=argparse.SUPPRESS,
                            help=f"{Config.__dataclass_fields__[group + '_options'].metadata['help']} "
                                 f"(recipe: {recipe!r})")
    return parser


@dataclass
class CommandLine:
    """What the command line asked for: ``fields`` given explicitly, dotted ``options`` per group and
    ``file`` values from ``--config``."""
    fields: dict
    options: dict
    file: dict


def read_command_line(defaults: Config, argv: list[str], description: str | None = None) -> CommandLine:
    parser = build_parser(defaults, description)
    args, rest = parser.parse_known_args(argv)
    explicit = vars(args)
    explicit.pop("debug", None)  # read by repro.cli, which must see it even when parsing fails
    types = field_types()
    explicit = {name: coerce(name, text, types[name]) if name != "config" else text for name, text in explicit.items()}
    file = load_config_file(explicit.pop("config")) if "config" in explicit else {}
    options: dict[str, dict] = {group: {} for group in OPTION_GROUPS}
    i = 0
    while i < len(rest):
        token = rest[i]
        key, has_value, inline = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        group, _, option = key.partition(".")
        if group not in OPTION_GROUPS or not option:
            raise ConfigError(f"unrecognised argument {token!r}; option groups are "
                              + ", ".join(f"--{g}.KEY VALUE" for g in OPTION_GROUPS) + " (see --help)")
        if not has_value:
            if i + 1 >= len(rest):
                raise ConfigError(f"{token} needs a value")
            inline, i = rest[i + 1], i + 1
        options[group][option] = _parse_literal(inline)
        i += 1
    return CommandLine(explicit, options, file)


def apply_command_line(base: Config, line: CommandLine) -> Config:
    """``base`` with the explicit fields and dotted options on top.  A new model/neuron/surrogate/loss/dataset
    name starts from no options (the base's were meant for its own choice)."""
    values = {**base.to_dict(), **line.fields}
    for group in OPTION_GROUPS:
        options = {} if values[group] != getattr(base, group) else values[f"{group}_options"]
        values[f"{group}_options"] = {**options, **line.options[group]}
    return Config.from_dict(values)


def with_file(defaults: Config, line: CommandLine) -> Config:
    """``defaults`` with the fields of ``--config FILE`` on top."""
    return Config.from_dict({**defaults.to_dict(), **line.file}, source="--config") if line.file else defaults


def parse_args(defaults: Config, argv: list[str] | None = None, description: str | None = None) -> Config:
    """``defaults`` (a recipe's config) with ``--config FILE`` and then the command line on top."""
    line = read_command_line(defaults, argv or [], description)
    return apply_command_line(with_file(defaults, line), line)


def apply_smoke(config: Config, embedded_dataset: str, **overrides) -> Config:
    """The same run shrunk to seconds on an embedded dataset (for tests and first-time users);
    ``overrides`` (a recipe's smoke settings, e.g. a narrower model) are applied last, their
    ``model_options`` on top of the run's (so a vanilla arm's model options stay).  Writes to
    ``runs/smoke/<run name>`` so a smoke run never collides with the real run."""
    if "model_options" in overrides:
        overrides = {**overrides, "model_options": {**config.model_options, **overrides["model_options"]}}
    return dataclasses.replace(
        config, dataset=embedded_dataset, dataset_options={}, epochs=1, batch_size=8, eval_batch_size=16,
        limit_train_batches=2, limit_eval_batches=1, warmup_epochs=0,
        output_dir=str(Path("runs") / "smoke" / Path(config.output_dir).name), **overrides,
    )
