"""The training engine shared by every recipe: ``train(config) -> summary``.

Runs on one CPU, one GPU or many processes through accelerate.  Writes to ``config.output_dir``:
``config.json`` (resolved config), ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt``
(last complete epoch, written atomically), ``best_model.pt`` (weights of the best test epoch),
``summary.json`` and ``training_curves.png``.

Method hooks (duck-typed, so methods plug in without touching the engine):
- any module of the model may define ``on_model_built(model)`` (called once before the optimiser is
  built, e.g. to tie parameters across layers);
- any module of the model, or the loss, may define ``on_epoch_start(epoch)`` (0-based; called
  before each training epoch, also after a resume) and ``after_optimizer_step(step)`` (global
  optimiser step count, 1-based);
- a loss may define ``bind(model)``, called once with the unwrapped model before training;
- a parameter may carry ``no_weight_decay = True`` and/or ``lr_mult = float``.

Determinism and resume: all random generators are re-seeded from (seed, epoch) at the start of
every epoch, and the learning rate is a pure function of the epoch, so a run resumed from the
checkpoint of epoch e continues exactly as the uninterrupted run would.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, load_pretrained, save_checkpoint, save_json
from .config import Config
from .datasets import create_dataset, modality_of, to_model_input
from .diagnostics import FiringRateMonitor, collect_diagnostics
from .losses import create_loss
from .models import TDBatchNorm, create_model
from .plots import plot_training_curves, results_table, save_segmentation_examples
from .tasks import task_for

# Fields that may change when resuming (run control, not the experiment).
RESUMABLE_CHANGES = {"resume", "output_dir", "num_workers", "pin_memory", "persistent_workers", "tensorboard",
                     "diagnostics_every", "diagnostics_batches", "compile",
                     "eval_batch_size", "limit_eval_batches", "data_root", "download", "epochs", "pretrained"}


def validate(config: Config) -> None:
    """Config-time checks with messages that say what to change."""
    checks = [
        (config.num_steps >= 1, f"num_steps must be >= 1, got {config.num_steps}"),
        (config.epochs >= 1, f"epochs must be >= 1, got {config.epochs}"),
        (config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}"),
        (config.lr > 0, f"lr must be > 0, got {config.lr}"),
        (config.weight_decay >= 0, f"weight_decay must be >= 0, got {config.weight_decay}"),
        (config.optimizer in ("sgd", "adamw"), f"optimizer must be 'sgd' or 'adamw', got {config.optimizer!r}"),
        (config.schedule in ("cosine", "constant"), f"schedule must be 'cosine' or 'constant', got {config.schedule!r}"),
        (0 <= config.warmup_epochs < config.epochs or config.warmup_epochs == 0,
         f"warmup_epochs must be in [0, epochs), got {config.warmup_epochs}"),
        (config.mixed_precision in ("no", "fp16", "bf16"),
         f"mixed_precision must be 'no', 'fp16' or 'bf16', got {config.mixed_precision!r}"),
        (config.grad_accumulation >= 1, f"grad_accumulation must be >= 1, got {config.grad_accumulation}"),
        (config.nonfinite in ("stop", "skip"), f"nonfinite must be 'stop' or 'skip', got {config.nonfinite!r}"),
        (config.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {config.grad_clip}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


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


def make_loader(dataset, config: Config, train: bool, num_processes: int,
                generator: torch.Generator | None = None) -> DataLoader:
    """``generator`` drives the shuffling; the engine re-seeds it every epoch, so the sample order is
    the same for 1 or N processes (accelerate shards each global batch) and after a resume."""
    workers = config.num_workers
    if workers < 0:  # automatic: in-memory datasets need no workers
        workers = 0 if getattr(dataset, "in_memory", False) else min(8, max(1, (os.cpu_count() or 1) // num_processes))
    return DataLoader(
        dataset, batch_size=config.batch_size if train else config.eval_batch_size, shuffle=train, drop_last=train,
        num_workers=workers, pin_memory=config.pin_memory and torch.cuda.is_available(),
        persistent_workers=config.persistent_workers and workers > 0, generator=generator,
    )


@torch.no_grad()
def check_model_fits_data(model: nn.Module, dataset, modality: str, config: Config) -> None:
    """One eval-mode forward on one test sample (no state changes), so a model/data mismatch fails before
    training with a sentence that says what to change."""
    sample = dataset[0][0].unsqueeze(0)
    model.eval()
    try:
        output = model(to_model_input(sample, modality))
    except (ValueError, RuntimeError) as error:
        raise ValueError(f"model {config.model!r} does not fit dataset {config.dataset!r} ({modality} samples of shape "
                         f"{tuple(sample.shape[1:])}): {error}. Choose a model made for this data (e.g. vggsnn for "
                         "2x48x48 event frames, resnet19 for 3x32x32 images) or change --model.* / --num_steps")
    finally:
        model.train()
    expected = "[B, classes, H, W]" if modality == "segmentation" else "[T, B, classes]"
    fits = output.dim() == 4 and output.shape[1] == dataset.num_classes if modality == "segmentation" else \
        output.dim() == 3 and output.shape[-1] == dataset.num_classes
    if not fits:
        raise ValueError(f"model {config.model!r} returns {tuple(output.shape)} but dataset {config.dataset!r} "
                         f"({modality}, {dataset.num_classes} classes) needs {expected}; use a "
                         f"{'segmentation' if modality == 'segmentation' else 'classification'} model")


def check_resume_compatible(saved: dict, config: Config) -> None:
    current = config.to_dict()
    saved = {k: (list(v) if isinstance(v, tuple) else v) for k, v in saved.items()}
    current = {k: (list(v) if isinstance(v, tuple) else v) for k, v in current.items()}
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current[k]!r}" for k in changed)
        raise ValueError(f"cannot resume: the config differs from the checkpoint's ({details}). "
                         "Use the original settings, or a new --output_dir to start a fresh run")


def train(config: Config) -> dict:
    """Train and evaluate; returns the summary (also written to summary.json)."""
    validate(config)
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accumulation,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        log_with="tensorboard" if config.tensorboard else None, project_dir=str(output_dir),
    )
    main = accelerator.is_main_process
    checkpoint_path, metrics_path = output_dir / "checkpoint.pt", output_dir / "metrics.jsonl"
    if not config.resume and checkpoint_path.exists():
        raise FileExistsError(f"{output_dir} already holds a run; pass --resume to continue it "
                              "or choose another --output_dir")

    set_seed(config.seed)
    modality = modality_of(config.dataset)
    data_kwargs = dict(root=config.data_root, download=config.download, **config.dataset_options)
    if modality == "event":
        data_kwargs.setdefault("num_frames", config.num_steps)  # one frame per timestep
    train_set = create_dataset(config.dataset, "train", **data_kwargs)
    test_set = create_dataset(config.dataset, "test", **data_kwargs)
    model = create_model(
        config.model, num_classes=train_set.num_classes, in_channels=train_set.in_channels,
        num_steps=config.num_steps, neuron=config.neuron, surrogate=config.surrogate,
        neuron_kwargs=config.neuron_options, surrogate_kwargs=config.surrogate_options, **config.model_options,
    )
    for module in list(model.modules()):
        if hasattr(module, "on_model_built"):
            module.on_model_built(model)
    check_model_fits_data(model, test_set, modality, config)
    for module in model.modules():
        if isinstance(module, TDBatchNorm):
            module.sync = config.sync_bn
    if config.compile:
        model.compile()  # in place: state_dict keys unchanged
    loss_fn = create_loss(config.loss, **config.loss_options)
    optimizer = build_optimizer(model, config)
    task = task_for(train_set)

    start_epoch, best, history = 0, {}, []
    if config.pretrained and not (config.resume and checkpoint_path.exists()):
        missing, unexpected = load_pretrained(model, config.pretrained)
        accelerator.print(f"initialised from {config.pretrained}: {len(missing)} entries not in it (kept as "
                          f"initialised), {len(unexpected)} checkpoint entries unused")
    if config.resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        check_resume_compatible(state["config"], config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, history = state["epoch"], state["best"], state["history"]
        accelerator.print(f"resumed from {checkpoint_path} after epoch {start_epoch}")

    shuffle_generator = torch.Generator()
    train_loader = make_loader(train_set, config, True, accelerator.num_processes, shuffle_generator)
    test_loader = make_loader(test_set, config, False, accelerator.num_processes)
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader, test_loader)
    if config.resume and start_epoch and accelerator.scaler is not None and "scaler" in state:
        accelerator.scaler.load_state_dict(state["scaler"])
    hooks = [*accelerator.unwrap_model(model).modules(), loss_fn]
    epoch_hooks = [m.on_epoch_start for m in hooks if hasattr(m, "on_epoch_start")]
    step_hooks = [m.after_optimizer_step for m in hooks if hasattr(m, "after_optimizer_step")]
    if hasattr(loss_fn, "bind"):
        loss_fn.bind(accelerator.unwrap_model(model))

    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_json(output_dir / "config.json", config.to_dict())
        metrics_path.write_text("".join(json.dumps(row) + "\n" for row in history))
    if config.tensorboard:
        accelerator.init_trackers("tensorboard", config={k: str(v) for k, v in config.to_dict().items()})

    for epoch in range(start_epoch, config.epochs):
        set_seed(config.seed + epoch)
        shuffle_generator.manual_seed(config.seed + epoch)
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * lr_factor(epoch, config)
        for hook in epoch_hooks:
            hook(epoch)
        started = time.time()
        try:
            train_stats = train_one_epoch(model, train_loader, optimizer, loss_fn, task, accelerator, config, epoch,
                                          step_hooks, modality)
        except FloatingPointError as error:
            last = f"{checkpoint_path} (epoch {epoch})" if epoch > 0 else "none yet"
            raise FloatingPointError(f"{error}; the last good checkpoint is {last}. Lower --lr, set --grad_clip, "
                                     "or pass --nonfinite skip; then continue with --resume") from None
        test_stats = evaluate(model, test_loader, task, accelerator, config, modality)
        improved = test_stats[task.primary] >= best.get(task.primary, -math.inf)
        best = {k: max(v, best.get(k, -math.inf)) for k, v in test_stats.items() if k in ("test_accuracy", "test_miou")}
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **train_stats, **test_stats,
               **{f"best_{k}": v for k, v in best.items()}, "epoch_time_s": round(time.time() - started, 3)}
        history.append(row)
        if main and config.diagnostics_every and (epoch + 1) % config.diagnostics_every == 0:
            save_json(output_dir / "diagnostics" / f"epoch_{epoch + 1:04d}.json",
                      run_diagnostics(accelerator.unwrap_model(model), test_set, modality, config))
        if config.tensorboard:
            accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=epoch + 1)
        if main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            weights = accelerator.unwrap_model(model).state_dict()
            if improved:
                save_checkpoint(output_dir / "best_model.pt", {"model": weights, "epoch": epoch + 1,
                                                                "config": config.to_dict()})
            save_checkpoint(checkpoint_path, {
                "model": weights, "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "best": best, "history": history, "config": config.to_dict(),
            })
        accelerator.wait_for_everyone()
        miou = f", mIoU {row['test_miou']:.2f}%" if "test_miou" in row else ""
        accelerator.print(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f}, "
                          f"test acc {row['test_accuracy']:.2f}% (best {best['test_accuracy']:.2f}%){miou}, "
                          f"firing rate {row['firing_rate']:.4f}")

    last = history[-1]
    summary = {
        **{k: last[k] for k in ("test_accuracy", "test_miou") if k in last}, **{f"best_{k}": v for k, v in best.items()},
        "epochs": last["epoch"],
        "firing_rate": last["firing_rate"], "firing_rate_per_layer": last["firing_rate_per_layer"],
        "train_time_s": round(sum(r["epoch_time_s"] for r in history), 2),
        "num_parameters": sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
        "num_processes": accelerator.num_processes, "device": str(accelerator.device),
        "model": config.model, "neuron": config.neuron, "surrogate": config.surrogate, "loss": config.loss,
        "dataset": config.dataset, "num_steps": config.num_steps, "seed": config.seed,
        "source": "this run (not a published number)",
    }
    if main:
        save_json(output_dir / "summary.json", summary)
        plot_training_curves(history, output_dir / "training_curves.png", title=f"{config.model} on {config.dataset}")
        if task.primary == "test_miou":
            save_segmentation_examples(accelerator.unwrap_model(model), test_set, output_dir / "examples.png")
        print(results_table(history, summary))
    if config.tensorboard:
        accelerator.end_training()
    return summary


def train_one_epoch(model, loader, optimizer, loss_fn, task, accelerator, config: Config, epoch: int,
                    step_hooks=(), modality: str = "static") -> dict:
    """One epoch.  Before each optimiser step the loss and the gradient norm are checked for NaN/inf
    (one host sync per step, agreed across processes): ``nonfinite="stop"`` raises
    FloatingPointError, ``"skip"`` drops the step and counts it."""
    model.train()
    loss_sum = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    stats, seen, skipped = 0, 0, 0
    total = min(len(loader), config.limit_train_batches or len(loader))
    quiet = not accelerator.is_local_main_process or not sys.stderr.isatty()  # no bars in logs / CI
    bar = tqdm(loader, total=total, desc=f"epoch {epoch + 1}", disable=quiet, leave=False)
    for step, (inputs, targets) in enumerate(bar):
        if step >= total:
            break
        global_step = epoch * math.ceil(total / config.grad_accumulation) + step // config.grad_accumulation + 1
        with accelerator.accumulate(model):
            outputs = model(to_model_input(inputs, modality))
            loss = loss_fn(outputs, targets)
            accelerator.backward(loss)
            if accelerator.sync_gradients and not step_is_finite(model, loss, accelerator, config):
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
    if seen == 0:
        raise RuntimeError(f"epoch {epoch + 1} trained on no batch: every step was non-finite or the data is empty")
    totals = accelerator.reduce(torch.cat([torch.tensor([float(seen)], device=loss_sum.device, dtype=torch.float64),
                                           loss_sum.view(1), stats]), reduction="sum")
    count = int(totals[0].item())
    metrics = task.finalize(totals[2:], count)
    return {"train_loss": totals[1].item() / count, "train_accuracy": metrics["accuracy"], "nonfinite_skipped": skipped}


def run_diagnostics(model: nn.Module, dataset, modality: str, config: Config) -> dict:
    """repro.diagnostics.collect_diagnostics on the first test batches, in eval mode, on this process
    only (a plain loader: no collective calls), every buffer restored afterwards."""
    loader = DataLoader(dataset, batch_size=config.eval_batch_size)
    batches = ((to_model_input(inputs, modality), targets) for inputs, targets in loader)
    with torch.compiler.set_stance("force_eager"):  # with --compile: hooks and counting modes would recompile
        return collect_diagnostics(model, batches, max_batches=config.diagnostics_batches)


def step_is_finite(model, loss, accelerator, config: Config) -> bool:
    """Clip (if asked) and check loss and gradient norm; fp16 gradients are left to the grad scaler."""
    if config.grad_clip:
        norm = accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
    elif config.mixed_precision == "fp16":
        norm = torch.zeros((), device=loss.device)
    else:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads \
            else torch.zeros((), device=loss.device)
    bad = (~torch.isfinite(loss.detach().float() + norm.float())).float()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return bad.item() == 0


@torch.no_grad()
def evaluate(model, loader, task, accelerator, config: Config, modality: str = "static") -> dict:
    """The task's test metrics (loss is plain CE whatever the training loss) and firing rates, from
    per-sample statistics gathered over processes without duplicates."""
    model.eval()
    sums, seen = 0, 0
    total = min(len(loader), config.limit_eval_batches or len(loader))
    with FiringRateMonitor(accelerator.unwrap_model(model)) as monitor:
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
