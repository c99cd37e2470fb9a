"""The training engine shared by every recipe: ``train(config) -> summary``.

Runs on one CPU, one GPU or many processes through accelerate.  Writes to ``config.output_dir``:
``config.json`` (resolved config), ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt``
(last complete epoch, written atomically), ``best_model.pt`` (weights of the best test epoch),
``summary.json``, ``training_curves.png`` and ``pretrained/`` (the final weights as safetensors, a
config.json that rebuilds the model and a model card: ``repro.export``).

Method hooks (duck-typed, so methods plug in without touching the engine):
- any module of the model may define ``on_model_built(model)`` (called once before the optimiser is
  built, e.g. to tie parameters across layers);
- any module of the model, or the loss, may define ``on_epoch_start(epoch)`` (0-based; called
  before each training epoch, also after a resume) and ``after_optimizer_step(step)`` (global
  optimiser step count, 1-based);
- a loss may define ``bind(model)``, called once with the unwrapped model before training;
- a parameter may carry ``no_weight_decay = True`` and/or ``lr_mult = float``.

Determinism and resume: all random generators are re-seeded from (seed, epoch) at the start of
every epoch, the sample order is a function of (seed, epoch) and each sample's augmentation of (seed,
epoch, index) (``repro.datasets.sampling``), and the learning rate is a pure function of the epoch, so
a run resumed from the checkpoint of epoch e continues exactly as the uninterrupted run would, and N
processes see the same global batches as one.

Failures: a bad setting raises ``ConfigError`` (a ValueError) before anything is built; a NaN/inf loss or
gradient stops the run (or skips the step), non-finite weights or optimiser state always stop it, and no
checkpoint with a non-finite value is written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import sys
import time
import typing
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import (first_nonfinite, load_checkpoint, load_pretrained, lock_run_directory,
                         remove_stale_temp_files, save_checkpoint, save_json)
from .config import Config, ConfigError, coerce, field_types
from .datasets import DATASETS, create_dataset, modality_of, to_model_input
from .datasets.sampling import EpochSampler, SeededItems
from .datasets.text import unshadow_hf_datasets
from .diagnostics import DEFAULT_MEASURES, FiringRateMonitor, collect_diagnostics
from .export import PRETRAINED_DIR, save_pretrained
from .losses import LOSSES, create_loss
from .models import MODELS, NEURONS, TDBatchNorm, call_model_built_hooks, create_model
from .surrogates import SURROGATES
from .provenance import code_commit, device_name
from .plots import plot_training_curves, results_table, save_segmentation_examples
from .tasks import ClassificationTask, SegmentationTask, task_for

# The run directory's checkpoint of the last complete epoch and its metrics rows.
CHECKPOINT_FILE, METRICS_FILE = "checkpoint.pt", "metrics.jsonl"
# Fields that may change when resuming (run control, not the experiment).
RESUMABLE_CHANGES = {"resume", "output_dir", "num_workers", "pin_memory", "persistent_workers", "report_to",
                     "log_every", "diagnostics_every", "diagnostics_batches", "compile",
                     "eval_batch_size", "limit_eval_batches", "data_root", "download", "epochs", "pretrained"}
# Experiment fields the non-finite stop advises changing; a resume may change them and records the change.
RECOVERY_CHANGES = ("lr", "grad_clip", "nonfinite")
# Run settings accelerate resolves (launcher flags, accelerate config, environment); a resume records changes.
LAUNCHER_SETTINGS = ("mixed_precision", "num_processes", "gradient_accumulation_steps", "compile")
TRACKERS = ("tensorboard", "wandb", "mlflow")
# What the model/data check suggests for each dataset modality.
MODELS_FOR_MODALITY = {"static": "resnet19 or spikformer for 3x32x32 images, resnet18 for ImageNet-size ones",
                       "event": "vggsnn for 2x48x48 event frames, spikformer for 128x128 ones",
                       "text": "spikformer_text for token ids",
                       "segmentation": "spiking_fpn or spiking_unet"}
# Arguments the engine passes itself, so not options of --GROUP.KEY.
ENGINE_ARGUMENTS = {"model": {"num_classes", "in_channels", "num_steps", "neuron", "surrogate", "neuron_kwargs",
                              "surrogate_kwargs"},
                    "neuron": {"num_steps", "surrogate", "surrogate_kwargs"}, "dataset": {"split", "root", "download"}}
# Numeric component options that must be > 0 (a width of 0 builds a 1-channel network).
POSITIVE_OPTIONS = {"width", "dim", "depth", "heads", "input_size", "crop_size", "num_frames"}


def validate(config: Config) -> None:
    """Config-time checks, before anything is built; each message names the option, the value and what
    is allowed."""
    types = field_types()
    for name, value in config.to_dict().items():  # a Config built in Python skips the command line's parsing
        if types[name] in (int, float, bool) or name == "mixed_precision":
            coerce(name, value, types[name])
    trackers = [t for t in config.report_to.split(",") if t]
    checks = [
        (config.num_steps >= 1, f"--num_steps must be >= 1, got {config.num_steps}"),
        (config.epochs >= 1, f"--epochs must be >= 1, got {config.epochs}"),
        (config.batch_size >= 1, f"--batch_size must be >= 1, got {config.batch_size}"),
        (config.eval_batch_size >= 1, f"--eval_batch_size must be >= 1, got {config.eval_batch_size}"),
        (config.lr > 0, f"--lr must be > 0, got {config.lr}"),
        (config.weight_decay >= 0, f"--weight_decay must be >= 0, got {config.weight_decay}"),
        (0 <= config.momentum < 1, f"--momentum must be in [0, 1), got {config.momentum}"),
        (config.min_lr >= 0 and config.warmup_lr >= 0,
         f"--min_lr and --warmup_lr must be >= 0, got {config.min_lr}, {config.warmup_lr}"),
        (config.optimizer in ("sgd", "adamw"), f"--optimizer must be 'sgd' or 'adamw', got {config.optimizer!r}"),
        (config.schedule in ("cosine", "constant"),
         f"--schedule must be 'cosine' or 'constant', got {config.schedule!r}"),
        (0 <= config.warmup_epochs < config.epochs or config.warmup_epochs == 0,
         f"--warmup_epochs must be in [0, epochs) = [0, {config.epochs}), got {config.warmup_epochs}: pass "
         f"--warmup_epochs {max(config.epochs - 1, 0)} or more --epochs"),
        (config.mixed_precision in (None, "no", "fp16", "bf16"),
         f"--mixed_precision must be 'no', 'fp16' or 'bf16', got {config.mixed_precision!r}"),
        (config.grad_accumulation >= 1, f"--grad_accumulation must be >= 1, got {config.grad_accumulation}"),
        (config.nonfinite in ("stop", "skip"), f"--nonfinite must be 'stop' or 'skip', got {config.nonfinite!r}"),
        (config.grad_clip >= 0, f"--grad_clip must be >= 0 (0 = off), got {config.grad_clip}"),
        (min(config.limit_train_batches, config.limit_eval_batches) >= 0,
         f"--limit_train_batches and --limit_eval_batches must be >= 0 (0 = all), got "
         f"{config.limit_train_batches}, {config.limit_eval_batches}"),
        (min(config.log_every, config.diagnostics_every, config.diagnostics_batches) >= 0,
         "--log_every, --diagnostics_every and --diagnostics_batches must be >= 0"),
        (config.report_to in ("none", "all") or all(t in TRACKERS for t in trackers),
         f"--report_to must be none, all or a comma list of {', '.join(TRACKERS)}; got {config.report_to!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def accepted_options(factory) -> dict[str, inspect.Parameter] | None:
    """Keyword parameters of a registered factory with evaluated annotations; a factory that forwards
    ``**kwargs`` to the class it returns (``lif`` -> ``LIF``) also accepts that class's.  None when the
    accepted names cannot be known."""
    try:
        params = dict(inspect.signature(factory, eval_str=True).parameters)
        returned = typing.get_type_hints(factory).get("return") if not inspect.isclass(factory) else None
    except (NameError, TypeError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        if not inspect.isclass(returned):
            return None
        params.update(accepted_options(returned) or {})
    return {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def check_options(group: str, name: str, factory, options: dict) -> dict:
    """``--GROUP.KEY`` values checked against the factory's parameters and parsed by their annotated type."""
    params = accepted_options(factory)
    if params is None:
        return options
    params = {k: p for k, p in params.items() if k not in ENGINE_ARGUMENTS.get(group, ())}
    checked = {}
    for key, value in options.items():
        if key not in params:
            raise ConfigError(f"--{group}.{key}: {group} {name!r} has no option {key!r}; valid options: "
                              f"{sorted(params)}")
        annotation = params[key].annotation
        simple = typing.get_args(annotation) or (annotation,)
        if all(k in (bool, int, float, str, type(None)) for k in simple):
            value = coerce(f"{group}.{key}", value, annotation)
        if key in POSITIVE_OPTIONS and isinstance(value, (int, float)) and not value > 0:
            raise ConfigError(f"--{group}.{key} must be > 0, got {value}")
        checked[key] = value
    return checked


def checked_options(config: Config) -> Config:
    """``config`` with every option dictionary checked against its component (names from the registries)."""
    registries = {"model": MODELS, "neuron": NEURONS, "surrogate": SURROGATES, "loss": LOSSES, "dataset": DATASETS}
    return dataclasses.replace(config, **{
        f"{group}_options": check_options(group, getattr(config, group), registry.get(getattr(config, group)),
                                          getattr(config, f"{group}_options"))
        for group, registry in registries.items()})


def lr_factor(epoch: int, config: Config) -> float:
    """Multiplier of the peak lr in ``epoch`` (0-based): linear warm-up from warmup_lr, then cosine to
    min_lr over the remaining epochs (or constant)."""
    if epoch < config.warmup_epochs:
        start = config.warmup_lr / config.lr
        return start + (1 - start) * epoch / config.warmup_epochs
    if config.schedule == "constant":
        return 1.0
    progress = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
    floor = config.min_lr / config.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """Parameter groups keyed by (weight decay, lr multiplier); each group's ``peak_lr`` is scaled
    by the schedule every epoch."""
    groups: dict[tuple[float, float], list] = {}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        exempt = getattr(param, "no_weight_decay", False) or (config.no_decay_norm_bias and param.ndim <= 1)
        key = (0.0 if exempt else config.weight_decay, float(getattr(param, "lr_mult", 1.0)))
        groups.setdefault(key, []).append(param)
    groups = [{"params": params, "weight_decay": wd, "peak_lr": config.lr * mult}
              for (wd, mult), params in groups.items()]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas))


def make_loader(dataset, config: Config, train: bool, num_processes: int) -> DataLoader:
    """Training: order and augmentation are functions of (seed, epoch, index) (``repro.datasets.sampling``),
    so they are the same for 1 or N processes (accelerate shards each global batch) and after a resume;
    call ``loader.sampler.set_epoch`` before each epoch.  Evaluation: in order."""
    workers = config.num_workers
    if workers < 0:  # automatic: in-memory datasets need no workers
        workers = 0 if getattr(dataset, "in_memory", False) else min(8, max(1, (os.cpu_count() or 1) // num_processes))
    order = dict(dataset=SeededItems(dataset, config.seed), sampler=EpochSampler(len(dataset), config.seed)) \
        if train else dict(dataset=dataset)
    return DataLoader(
        **order, batch_size=config.batch_size if train else config.eval_batch_size, drop_last=train,
        num_workers=workers, pin_memory=config.pin_memory and torch.cuda.is_available(),
        persistent_workers=config.persistent_workers and workers > 0,
    )


@torch.no_grad()
def check_model_fits_data(model: nn.Module, dataset, modality: str, config: Config) -> None:
    """One eval-mode forward on one test sample (no state changes), so a model/data mismatch fails before
    training with a sentence that says what to change."""
    suggestion = f"choose a model made for {modality} data ({MODELS_FOR_MODALITY[modality]})"
    sample = dataset[0][0].unsqueeze(0)
    model.eval()
    try:
        output = model(to_model_input(sample, modality))
    except (ValueError, RuntimeError) as error:
        raise ValueError(f"model {config.model!r} does not fit dataset {config.dataset!r} ({modality} samples of shape "
                         f"{tuple(sample.shape[1:])}): {error}. {suggestion[0].upper()}{suggestion[1:]}, or change "
                         "--model.* / --num_steps") from None
    finally:
        model.train()
    expected = "[B, classes, H, W]" if modality == "segmentation" else "[T, B, classes]"
    fits = output.dim() == 4 and output.shape[1] == dataset.num_classes if modality == "segmentation" else \
        output.dim() == 3 and output.shape[-1] == dataset.num_classes
    if not fits:
        raise ValueError(f"model {config.model!r} returns {tuple(output.shape)} but dataset {config.dataset!r} "
                         f"({modality}, {dataset.num_classes} classes) needs {expected}; {suggestion}")


def resume_changes(saved: dict, config: Config) -> dict[str, list]:
    """The fields a resume changes, as {field: [checkpoint value, new value]}: run control (RESUMABLE_CHANGES)
    is left out, the recovery fields of the non-finite advice (RECOVERY_CHANGES) are returned, any other
    change is refused."""
    current = config.to_dict()
    saved = {k: (list(v) if isinstance(v, tuple) else v) for k, v in saved.items()}
    current = {k: (list(v) if isinstance(v, tuple) else v) for k, v in current.items()}
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    refused = [k for k in changed if k not in RECOVERY_CHANGES]
    if refused:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current[k]!r}" for k in refused)
        raise ConfigError(f"cannot resume: the config differs from the checkpoint's ({details}). "
                          "Use the original settings, or a new --output_dir to start a fresh run")
    return {k: [saved.get(k), current[k]] for k in changed}


def launcher_changes(saved: dict, runtime: dict) -> dict[str, list]:
    """What the launcher changed since the checkpoint (precision, process count, accumulation, compile; accelerate
    resolves them outside the config), as {"launcher.KEY": [checkpoint value, now]}: a resume allows and
    records them, as on moving a run to other hardware."""
    return {f"launcher.{k}": [saved[k], runtime[k]] for k in LAUNCHER_SETTINGS if k in saved and saved[k] != runtime[k]}


def create_accelerator(config: Config, output_dir: Path) -> Accelerator:
    """Settings accelerate owns (mixed precision, dynamo backend, gradient accumulation) follow accelerate's
    own resolution (``accelerate launch`` flags, ``accelerate config``, ACCELERATE_* variables) unless the
    config sets them: ``mixed_precision`` when not None, ``grad_accumulation`` when not 1."""
    trackers = None if config.report_to == "none" else "all" if config.report_to == "all" else \
        config.report_to.split(",")
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accumulation,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        log_with=trackers, project_dir=str(output_dir),
    )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ConfigError("--mixed_precision fp16 needs a GPU (CPU autocast is bf16); on CPU use bf16 or no")
    return accelerator


def runtime_settings(accelerator: Accelerator, config: Config) -> dict:
    """What the run actually uses, printed at the start and stored in summary.json."""
    dynamo = accelerator.state.dynamo_plugin.backend
    return {"mixed_precision": accelerator.mixed_precision, "num_processes": accelerator.num_processes,
            "device": str(accelerator.device), "distributed_type": str(accelerator.distributed_type.value),
            "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
            "compile": "inductor (--compile)" if config.compile else str(dynamo.value).lower()}


def prepare_output_dir(output_dir: Path) -> None:
    """Create the run directory or say why it cannot be."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output_dir {output_dir} is a file; choose a directory")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--output_dir {output_dir} cannot be created ({error.strerror}); choose a writable "
                          "directory") from None


def train(config: Config) -> dict:
    """Train and evaluate; returns the summary (also written to summary.json).  The run directory is
    locked for the run (``.lock``): a second run writing to it is refused."""
    validate(config)
    config = checked_options(config)
    output_dir = Path(config.output_dir)
    accelerator = create_accelerator(config, output_dir)
    if accelerator.is_main_process:
        prepare_output_dir(output_dir)
    with lock_run_directory(output_dir, accelerator.is_main_process):
        return run(config, accelerator, output_dir)


def build_dataset(config: Config, split: str):
    """One split of the run's dataset as training and ``repro.report`` see it: event data get one frame per
    timestep (``num_frames = num_steps``) unless ``--dataset.num_frames`` sets it."""
    kwargs = dict(root=config.data_root, download=config.download, **config.dataset_options)
    if modality_of(config.dataset) == "event":
        kwargs.setdefault("num_frames", config.num_steps)
    return create_dataset(config.dataset, split, **kwargs)


def build_model(config: Config, dataset) -> nn.Module:
    """The run's model for ``dataset`` (classes, input channels), ``on_model_built`` hooks called."""
    return call_model_built_hooks(create_model(
        config.model, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
        num_steps=config.num_steps, neuron=config.neuron, surrogate=config.surrogate,
        neuron_kwargs=config.neuron_options, surrogate_kwargs=config.surrogate_options, **config.model_options,
    ))


class Parts(typing.NamedTuple):
    """The run's datasets, loss, model, optimiser and task, built and checked by ``build_parts``."""
    modality: str
    train_set: Dataset
    test_set: Dataset
    loss_fn: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    task: ClassificationTask | SegmentationTask


class Training(typing.NamedTuple):
    """What the epochs run on (``prepare_training``): model, optimiser and loaders as accelerate prepared them, the
    model as built (``bare_model``: state_dict keys as built), the training sampler and the method hooks."""
    model: nn.Module
    bare_model: nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    sampler: EpochSampler
    test_loader: DataLoader
    epoch_hooks: list
    step_hooks: list


@dataclasses.dataclass
class Progress:
    """Where the run stands: the first epoch to train, the best test metrics, one metrics row per trained epoch,
    the config changes of resumes and the checkpoint's grad scaler state."""
    start_epoch: int = 0
    best: dict = dataclasses.field(default_factory=dict)
    history: list = dataclasses.field(default_factory=list)
    changes: list = dataclasses.field(default_factory=list)
    scaler: dict | None = None


def run(config: Config, accelerator: Accelerator, output_dir: Path) -> dict:
    """One run in ``output_dir``: build and check its parts, restore the checkpoint on --resume, then train,
    evaluate and record every epoch, and write the final summary."""
    check_run_directory(config, output_dir)
    runtime = runtime_settings(accelerator, config)
    accelerator.print("run: " + ", ".join(f"{k} {v}" for k, v in runtime.items()))
    parts = build_parts(config, accelerator)
    progress = restore_checkpoint(parts, config, accelerator, output_dir, runtime) if config.resume else Progress()
    training = prepare_training(parts, config, accelerator, progress)

    if accelerator.is_main_process:
        save_json(output_dir / "config.json", config.to_dict())
        (output_dir / METRICS_FILE).write_text("".join(json.dumps(row) + "\n" for row in progress.history))
    if config.report_to != "none":
        accelerator.init_trackers(output_dir.name, config=hyperparameters(config))

    for epoch in range(progress.start_epoch, config.epochs):
        set_seed(config.seed + epoch)
        training.sampler.set_epoch(epoch)
        for group in training.optimizer.param_groups:
            group["lr"] = group["peak_lr"] * lr_factor(epoch, config)
        for hook in training.epoch_hooks:
            hook(epoch)
        started = time.time()
        train_stats = train_epoch_checked(epoch, parts, training, config, accelerator, output_dir)
        test_stats = evaluate(training.model, training.test_loader, parts.task, accelerator, config, parts.modality)
        end_epoch(epoch, started, train_stats, test_stats, parts, training, progress, config, accelerator, output_dir,
                  runtime)
    return final_summary(parts, training, progress, config, accelerator, output_dir, runtime)


def check_run_directory(config: Config, output_dir: Path) -> None:
    """``output_dir`` holds a checkpoint exactly when --resume is given."""
    checkpoint_path = output_dir / CHECKPOINT_FILE
    if not config.resume and checkpoint_path.exists():
        raise FileExistsError(f"{output_dir} already holds a run; pass --resume to continue it "
                              "or choose another --output_dir")
    if config.resume and not checkpoint_path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}; run without --resume to start "
                                "the run, or point --output_dir at the run to continue")


def build_parts(config: Config, accelerator: Accelerator) -> Parts:
    """Seed, then build the datasets, loss, model and optimiser, each checked before any training (the global
    batch against the training samples, the loss against the task, the model against a test sample); without
    --resume the model starts from --pretrained when given."""
    set_seed(config.seed)
    modality = modality_of(config.dataset)
    train_set, test_set = build_dataset(config, "train"), build_dataset(config, "test")
    global_batch = config.batch_size * accelerator.num_processes
    if global_batch > len(train_set):
        raise ConfigError(f"--batch_size {config.batch_size} x {accelerator.num_processes} process(es) = "
                          f"{global_batch} exceeds the {len(train_set)} training samples of {config.dataset!r}; "
                          f"use --batch_size <= {len(train_set) // accelerator.num_processes}")
    loss_fn = create_loss(config.loss, **config.loss_options)
    check_loss_fits_task(loss_fn, modality, config)
    model = build_model(config, train_set)
    check_model_fits_data(model, test_set, modality, config)
    for module in model.modules():
        if isinstance(module, TDBatchNorm):
            module.sync = config.sync_bn
    if config.compile:
        # in place (state_dict keys unchanged); static shapes: a neuron run eagerly splits the blocks into frames
        # whose per-stage shapes would turn dynamic, which inductor (torch 2.14.1) fails to compile
        model.compile(dynamic=False)
    optimizer = build_optimizer(model, config)
    task = task_for(train_set)
    if config.pretrained and not config.resume:
        missing, unexpected = load_pretrained(model, config.pretrained)
        accelerator.print(f"initialised from {config.pretrained}: {len(missing)} entries not in it (kept as "
                          f"initialised), {len(unexpected)} checkpoint entries unused")
    return Parts(modality, train_set, test_set, loss_fn, model, optimizer, task)


def restore_checkpoint(parts: Parts, config: Config, accelerator: Accelerator, output_dir: Path,
                       runtime: dict) -> Progress:
    """--resume: the checkpoint's weights, optimiser state (keeping this run's peak lrs: a resume may change
    --lr) and progress, once ``resume_changes`` and ``launcher_changes`` allow the changes, which are recorded."""
    checkpoint_path = output_dir / CHECKPOINT_FILE
    state = load_checkpoint(checkpoint_path)
    changed = {**resume_changes(state["config"], config), **launcher_changes(state.get("runtime", {}), runtime)}
    try:
        parts.model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ConfigError(f"checkpoint {checkpoint_path} does not fit model {config.model!r} "
                          f"({str(error).strip().splitlines()[-1].strip()}); resume with the settings it was "
                          "trained with") from None
    peak_lrs = [group["peak_lr"] for group in parts.optimizer.param_groups]
    parts.optimizer.load_state_dict(state["optimizer"])
    for group, peak in zip(parts.optimizer.param_groups, peak_lrs):  # a resume may change --lr
        group["peak_lr"] = peak
    start_epoch = state["epoch"]
    changes = state.get("config_changes", []) + ([{"epoch": start_epoch + 1, **changed}] if changed else [])
    if accelerator.is_main_process:
        remove_stale_temp_files(output_dir)
    accelerator.print(f"resumed from {checkpoint_path} after epoch {start_epoch}"
                      + (f", changing {changed}" if changed else ""))
    return Progress(start_epoch, state["best"], state["history"], changes, state.get("scaler"))


def prepare_training(parts: Parts, config: Config, accelerator: Accelerator, progress: Progress) -> Training:
    """The loaders, everything handed to accelerate's ``prepare`` (the grad scaler restored on a resume), the
    method hooks collected and the loss bound to the model."""
    train_loader = make_loader(parts.train_set, config, True, accelerator.num_processes)
    sampler = train_loader.sampler
    test_loader = make_loader(parts.test_set, config, False, accelerator.num_processes)
    unshadow_hf_datasets()  # accelerate probes for Hugging Face datasets; run from a checkout it finds our folder
    model, optimizer, train_loader, test_loader = accelerator.prepare(parts.model, parts.optimizer, train_loader,
                                                                      test_loader)
    if progress.start_epoch and accelerator.scaler is not None and progress.scaler:
        accelerator.scaler.load_state_dict(progress.scaler)
    bare_model = accelerator.unwrap_model(model, keep_torch_compile=False)  # state_dict keys as built
    hooks = [*bare_model.modules(), parts.loss_fn]
    epoch_hooks = [m.on_epoch_start for m in hooks if hasattr(m, "on_epoch_start")]
    step_hooks = [m.after_optimizer_step for m in hooks if hasattr(m, "after_optimizer_step")]
    if hasattr(parts.loss_fn, "bind"):
        parts.loss_fn.bind(bare_model)
    return Training(model, bare_model, optimizer, train_loader, sampler, test_loader, epoch_hooks, step_hooks)


def train_epoch_checked(epoch: int, parts: Parts, training: Training, config: Config, accelerator: Accelerator,
                        output_dir: Path) -> dict:
    """``train_one_epoch``, then the weights and optimiser state checked for NaN/inf (main process); a
    FloatingPointError is raised again with the last good checkpoint and what to change."""
    last_good = f"{output_dir / CHECKPOINT_FILE} (epoch {epoch})" if epoch > 0 else "none yet"
    try:
        train_stats = train_one_epoch(training.model, training.train_loader, training.optimizer, parts.loss_fn,
                                      parts.task, accelerator, config, epoch, training.step_hooks, parts.modality)
        if accelerator.is_main_process:
            bad = first_nonfinite({"model": training.bare_model.state_dict(),
                                   "optimizer": training.optimizer.state_dict()})
            if bad:
                raise FloatingPointError(f"{bad} is non-finite after epoch {epoch + 1}")
    except FloatingPointError as error:
        remedies = "Lower --lr, set --grad_clip, or pass --nonfinite skip" if config.nonfinite == "stop" \
            else "Lower --lr or set --grad_clip"
        then = "then continue with --resume" if epoch > 0 else "then start again without --resume"
        raise FloatingPointError(f"{error}; the last good checkpoint is {last_good}. {remedies}; {then}") from None
    return train_stats


def end_epoch(epoch: int, started: float, train_stats: dict, test_stats: dict, parts: Parts, training: Training,
              progress: Progress, config: Config, accelerator: Accelerator, output_dir: Path, runtime: dict) -> None:
    """Record a trained and evaluated epoch: its metrics row (kept in ``progress``), diagnostics every
    --diagnostics_every epochs, the trackers, best_model.pt when the primary test metric is at least the best,
    checkpoint.pt and then the metrics line, and the printed headline."""
    main, primary, best = accelerator.is_main_process, parts.task.primary, progress.best
    improved = test_stats[primary] >= best.get(primary, -math.inf)
    best = {k: max(v, best.get(k, -math.inf)) for k, v in test_stats.items() if k in ("test_accuracy", "test_miou")}
    progress.best = best
    row = {"epoch": epoch + 1, "lr": training.optimizer.param_groups[0]["lr"], **train_stats, **test_stats,
           **{f"best_{k}": v for k, v in best.items()}, "epoch_time_s": round(time.time() - started, 3)}
    change = next((c for c in progress.changes if c["epoch"] == epoch + 1), None)
    if change:
        row["config_changes"] = change
    progress.history.append(row)
    if main and config.diagnostics_every and (epoch + 1) % config.diagnostics_every == 0:
        save_json(output_dir / "diagnostics" / f"epoch_{epoch + 1:04d}.json",
                  run_diagnostics(training.bare_model, parts.test_set, parts.modality, config))
    if config.report_to != "none":
        accelerator.log(tracker_metrics(row), step=epoch + 1)
    if main:
        weights = training.bare_model.state_dict()
        if improved:
            save_checkpoint(output_dir / "best_model.pt", {"model": weights, "epoch": epoch + 1,
                                                            "config": config.to_dict()})
        save_checkpoint(output_dir / CHECKPOINT_FILE, {
            "model": weights, "optimizer": training.optimizer.state_dict(), "epoch": epoch + 1,
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "best": best, "history": progress.history, "config": config.to_dict(),
            "config_changes": progress.changes, "runtime": runtime,
        })
        with (output_dir / METRICS_FILE).open("a") as f:  # after the checkpoint: a row is never ahead of it
            f.write(json.dumps(row) + "\n")
    accelerator.wait_for_everyone()
    headline = f"test mIoU {row['test_miou']:.2f}% (best {best['test_miou']:.2f}%), pixel acc " \
        f"{row['test_accuracy']:.2f}%" if "test_miou" in row else \
        f"test acc {row['test_accuracy']:.2f}% (best {best['test_accuracy']:.2f}%)"
    accelerator.print(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f}, {headline}, "
                      f"firing rate {row['firing_rate']:.4f}")


def final_summary(parts: Parts, training: Training, progress: Progress, config: Config, accelerator: Accelerator,
                  output_dir: Path, runtime: dict) -> dict:
    """The run's summary (last and best test metrics, firing rates, time, energy, settings, provenance), written
    with the training curves, segmentation examples, results table and pretrained/ export (main process)."""
    bare_model, history, best = training.bare_model, progress.history, progress.best
    last = history[-1]
    # energy of the final weights on the first test batch (one batch: a per-image estimate, at most one more eval batch)
    energy = run_diagnostics(bare_model, parts.test_set, parts.modality,
                             dataclasses.replace(config, diagnostics_batches=1), ("energy",))["energy"]
    summary = {
        **{k: last[k] for k in ("test_accuracy", "test_miou") if k in last}, **{f"best_{k}": v for k, v in best.items()},
        "epochs": last["epoch"],
        "firing_rate": last["firing_rate"], "firing_rate_per_layer": last["firing_rate_per_layer"],
        "train_time_s": round(sum(r["epoch_time_s"] for r in history), 2),
        "num_parameters": sum(p.numel() for p in bare_model.parameters()),
        **runtime, "config_changes": progress.changes,
        "model": config.model, "neuron": config.neuron, "surrogate": config.surrogate, "loss": config.loss,
        "dataset": config.dataset, "num_steps": config.num_steps, "seed": config.seed,
        "source": "this run (not a published number)",
        "gpu": device_name(accelerator.device), "commit": code_commit(),
        "energy": {k: energy[k] for k in ("snn_energy_mj", "ann_energy_mj", "ann_over_snn", "images")},
    }
    if accelerator.is_main_process:
        save_json(output_dir / "summary.json", summary)
        plot_training_curves([("", summary, history)], output_dir / "training_curves.png")
        if parts.task.primary == "test_miou":
            save_segmentation_examples(bare_model, parts.test_set, output_dir / "examples.png", summary)
        print(results_table(history, summary))
        save_pretrained(bare_model, output_dir / PRETRAINED_DIR, config, parts.train_set, summary, RESUMABLE_CHANGES)
    if config.report_to != "none":
        accelerator.end_training()
    return summary


def check_loss_fits_task(loss_fn: nn.Module, modality: str, config: Config) -> None:
    task = "segmentation" if modality == "segmentation" else "classification"
    if getattr(loss_fn, "task", task) != task:
        fitting = [name for name in LOSSES.names() if getattr(create_loss(name), "task", task) == task]
        raise ConfigError(f"--loss {config.loss} is a {loss_fn.task} loss but dataset {config.dataset!r} is "
                          f"{task}; choose one of {fitting}")


def hyperparameters(config: Config) -> dict:
    """The config as tracker hyperparameters (numbers and strings; dictionaries and tuples as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in config.to_dict().items()}


def tracker_metrics(row: dict) -> dict:
    """A metrics row for the trackers: numbers as they are, per-layer firing rates as the group
    ``firing_rate/<layer>``."""
    metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics.update({f"firing_rate/{layer}": rate for layer, rate in row.get("firing_rate_per_layer", {}).items()})
    return metrics


def train_one_epoch(model, loader, optimizer, loss_fn, task, accelerator, config: Config, epoch: int,
                    step_hooks=(), modality: str = "static") -> dict:
    """One epoch.  Before each optimiser step the loss, the gradient norm and the weights (the result of
    the previous accepted step) are checked for NaN/inf (one host sync per step, agreed across processes):
    a bad loss or gradient raises FloatingPointError with ``nonfinite="stop"`` and drops the step with
    ``"skip"``; non-finite weights always raise (no later step can repair them).  Off a terminal, every
    ``log_every`` steps prints loss, lr, images/s and the firing rate of that step's batch."""
    model.train()
    loss_sum = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    stats, seen, skipped = 0, 0, 0
    total = min(len(loader), config.limit_train_batches or len(loader))
    accumulation = accelerator.gradient_accumulation_steps
    on_terminal = sys.stderr.isatty()
    bar = tqdm(loader, total=total, desc=f"epoch {epoch + 1}", leave=False,
               disable=not accelerator.is_local_main_process or not on_terminal)  # no bars in logs / CI
    log_every = 0 if on_terminal else config.log_every
    started = time.time()
    for step, (inputs, targets) in enumerate(bar):
        if step >= total:
            break
        global_step = epoch * math.ceil(total / accumulation) + step // accumulation + 1
        logging = log_every and (step + 1) % log_every == 0
        # firing rate of a logged step (hooks would recompile a compiled model)
        compiled = config.compile or accelerator.state.dynamo_plugin.backend.value.lower() != "no"
        monitor = FiringRateMonitor(accelerator.unwrap_model(model, keep_torch_compile=False)) \
            if logging and not compiled else None
        with accelerator.accumulate(model), monitor or contextlib.nullcontext():
            outputs = model(to_model_input(inputs, modality))
            loss = loss_fn(outputs, targets)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                finite = step_is_finite(model, loss, accelerator, config)
                if finite is None:
                    raise FloatingPointError(f"the weights are non-finite after the optimiser step before epoch "
                                             f"{epoch + 1}, step {step + 1} (global step {global_step})")
                if not finite:
                    if config.nonfinite == "stop":
                        raise FloatingPointError(f"non-finite loss or gradient at epoch {epoch + 1}, step {step + 1} "
                                                 f"(global step {global_step})")
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            for hook in step_hooks:
                hook(global_step)
        loss_sum += loss.detach().double() * len(targets)
        stats = stats + task.sample_stats(outputs, targets).sum(0)
        seen += len(targets)
        if logging:
            rates = monitor.rates() if monitor else {}
            firing = f", firing rate {sum(rates.values()) / len(rates):.4f}" if rates else ""
            images_per_s = seen * accelerator.num_processes / (time.time() - started)
            accelerator.print(f"epoch {epoch + 1} step {step + 1}/{total}: loss {loss.item():.4f}, "
                              f"lr {optimizer.param_groups[0]['lr']:.4g}, {images_per_s:.1f} images/s{firing}",
                              flush=True)
    if seen == 0:
        raise FloatingPointError(f"epoch {epoch + 1} trained on no batch: all {skipped} steps were non-finite")
    totals = accelerator.reduce(torch.cat([torch.tensor([float(seen)], device=loss_sum.device, dtype=torch.float64),
                                           loss_sum.view(1), stats]), reduction="sum")
    count = int(totals[0].item())
    metrics = task.finalize(totals[2:], count)
    return {"train_loss": totals[1].item() / count, "train_accuracy": metrics["accuracy"], "nonfinite_skipped": skipped}


def run_diagnostics(model: nn.Module, dataset, modality: str, config: Config, measures=DEFAULT_MEASURES) -> dict:
    """repro.diagnostics.collect_diagnostics (``measures``) on the first test batches, in eval mode, on this
    process only (a plain loader: no collective calls), every buffer restored afterwards."""
    loader = DataLoader(dataset, batch_size=config.eval_batch_size)
    batches = ((to_model_input(inputs, modality), targets) for inputs, targets in loader)
    with torch.compiler.set_stance("force_eager"):  # with --compile: hooks and counting modes would recompile
        return collect_diagnostics(model, batches, measures, max_batches=config.diagnostics_batches)


def step_is_finite(model, loss, accelerator, config: Config) -> bool | None:
    """Clip (if asked) and check loss and gradient norm (fp16 gradients are left to the grad scaler) and
    the weights.  True: finite; False: a bad loss or gradient; None: non-finite weights."""
    params = list(model.parameters())
    if config.grad_clip:
        norm = accelerator.clip_grad_norm_(params, config.grad_clip)
    elif accelerator.mixed_precision == "fp16":
        norm = torch.zeros((), device=loss.device)
    else:
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads \
            else torch.zeros((), device=loss.device)
    weights = torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in params]).sum()
    bad = torch.stack([~torch.isfinite(loss.detach().float() + norm.float()), ~torch.isfinite(weights)]).float()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    bad_step, bad_weights = bad.tolist()
    return None if bad_weights else bad_step == 0


@torch.no_grad()
def evaluate(model, loader, task, accelerator, config: Config, modality: str = "static") -> dict:
    """The task's test metrics (loss is plain CE whatever the training loss) and firing rates, from
    per-sample statistics gathered over processes without duplicates."""
    model.eval()
    sums, seen = 0, 0
    total = min(len(loader), config.limit_eval_batches or len(loader))
    with FiringRateMonitor(accelerator.unwrap_model(model, keep_torch_compile=False)) as monitor:
        for step, (inputs, targets) in enumerate(loader):
            if step >= total:
                break
            outputs = model(to_model_input(inputs, modality))
            per_sample = accelerator.gather_for_metrics(task.sample_stats(outputs, targets))
            sums = sums + per_sample.sum(0)
            seen += len(per_sample)
        spikes, counts = monitor.totals()
        rates = monitor.rates(accelerator.reduce(spikes, "sum"), accelerator.reduce(counts, "sum"))
    metrics = {f"test_{k}": v for k, v in task.finalize(sums, seen).items()}
    return {**metrics, "firing_rate": sum(rates.values()) / max(len(rates), 1), "firing_rate_per_layer": rates}
