"""The shareable form of a trained model, laid out as timm and Hugging Face models are shared: a folder with

- ``model.safetensors``: the weights (tensors shared between layers stored once, as safetensors'
  ``save_model`` does);
- ``config.json``: what rebuilds the model: the run's full config (``training_config``), the data's classes and
  input channels, plus the recipe command it matches and the run's results;
- ``README.md``: a model card (Hugging Face front matter, then method, recipe, data, T, accuracy or mIoU, firing
  rate, energy estimate, and the recipe's lines tagged [reconstructed]).

Every run writes it to ``RUN_DIR/pretrained/`` with its final weights (the engine's end of run);
``python -m repro.hub export RUN_DIR --weights best`` writes the best test epoch's instead.
``repro.hub.from_pretrained`` reads the folder (or a hub repository holding it) back, ``repro.hub.push_to_hub``
uploads it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Collection

from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import save_model
from torch import nn

from .checkpoint import atomic_write, save_json
from .config import Config
from .datasets import modality_of
from .recipes import PUBLISHED, identify, reconstructed_notes

PRETRAINED_DIR = "pretrained"
WEIGHTS_NAME, CONFIG_NAME, CARD_NAME = "model.safetensors", "config.json", "README.md"
LIBRARY = "snn-repro"
FORMAT_VERSION = 1
RESULT_KEYS = ("test_accuracy", "best_test_accuracy", "test_miou", "best_test_miou", "epochs", "firing_rate",
               "energy", "train_time_s", "num_parameters", "num_processes", "device", "gpu", "commit", "seed")


def pretrained_config(config: Config, dataset, summary: dict, weights: dict, run_control: Collection[str]) -> dict:
    """config.json: ``architecture`` and ``training_config`` rebuild the model (with ``num_classes`` and
    ``in_channels`` of the data it was trained on); ``weights`` says which epoch's weights the folder holds."""
    command, flags = identify(config, run_control)
    return {
        "library": LIBRARY, "format_version": FORMAT_VERSION, "architecture": config.model,
        "num_classes": dataset.num_classes, "in_channels": dataset.in_channels, "num_steps": config.num_steps,
        "modality": modality_of(config.dataset), "dataset": config.dataset,
        "recipe": {"command": command, "extra_flags": flags}, "weights": weights,
        "results": {k: summary[k] for k in RESULT_KEYS if k in summary},
        "training_config": config.to_dict(),
    }


def save_pretrained(model: nn.Module, directory: str | Path, config: Config, dataset, summary: dict,
                    run_control: Collection[str], weights: dict | None = None) -> Path:
    """Write model.safetensors, config.json and README.md of ``model`` to ``directory``.  ``run_control``: the
    config fields that do not change the experiment (the engine's RESUMABLE_CHANGES), ignored when matching
    the run to a recipe.  ``weights``: ``{"selected": ..., "epoch": ...}`` (default: the final epoch)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = weights or {"selected": "final epoch", "epoch": summary["epochs"]}
    hub_config = pretrained_config(config, dataset, summary, weights, run_control)
    temporary = directory / f".{WEIGHTS_NAME}.tmp"
    save_model(model, str(temporary), metadata={"format": "pt"})
    temporary.replace(directory / WEIGHTS_NAME)
    save_json(directory / CONFIG_NAME, hub_config)
    card = model_card(hub_config)
    atomic_write(directory / CARD_NAME, lambda f: f.write(str(card).encode()))
    return directory


def _metric(hub_config: dict) -> tuple[str, str]:
    """(summary key, label) of the task's headline metric."""
    if "test_miou" in hub_config["results"]:
        return "test_miou", "mIoU (%)"
    return "test_accuracy", "top-1 accuracy (%)"


def model_card(hub_config: dict, repo_id: str | None = None) -> ModelCard:
    """The model card of a pretrained folder's config.json (all numbers this run's; published ones labelled)."""
    cfg, results = hub_config["training_config"], hub_config["results"]
    command, flags = hub_config["recipe"]["command"], hub_config["recipe"]["extra_flags"]
    key, label = _metric(hub_config)
    published = PUBLISHED.get(command) if command and not flags else None
    data = ModelCardData(library_name=LIBRARY, metrics=["mean_iou" if key == "test_miou" else "accuracy"],
                         tags=["spiking-neural-network", "snntorch", cfg["neuron"], cfg["surrogate"], cfg["dataset"]])
    title = (f"{cfg['model']}, {cfg['neuron']} neuron, {cfg['surrogate']} surrogate, {cfg['loss']} loss, "
             f"T = {cfg['num_steps']}, on {cfg['dataset']}")
    recipe = f"the recipe command `recipes/{command}`" + (f" with `{' '.join(flags)}`" if flags else "") \
        if command else "its own configuration (no recipe of the suite has its model, neuron, surrogate and loss)"
    energy = results.get("energy")
    rows = [(f"final-epoch test {label}", f"{results[key]:.2f}"),
            (f"best-epoch test {label}", f"{results['best_' + key]:.2f}"),
            ("epochs", results["epochs"]),
            ("firing rate, final epoch (mean over spiking layers)", f"{results['firing_rate']:.4f}")]
    if energy:
        rows += [("energy per image, final-epoch weights, SNN / ANN (mJ)",
                  f"{energy['snn_energy_mj']:.4g} / {energy['ann_energy_mj']:.4g} (ANN / SNN = "
                  f"{energy['ann_over_snn']:.2f})" if energy.get("ann_over_snn") else
                  f"{energy['snn_energy_mj']:.4g} / {energy['ann_energy_mj']:.4g}")]
    rows += [("seed", results.get("seed")), ("hardware", f"{results.get('num_processes', 1)} x "
                                                         f"{results.get('gpu', results.get('device'))}"),
             ("training time (s)", results.get("train_time_s")), ("code commit", results.get("commit")),
             ("parameters", results.get("num_parameters"))]
    notes = reconstructed_notes(command.split()[0]) if command else []
    no_notes = "the recipe file tags no line [reconstructed]" if command else \
        "no recipe: every setting is this run's own choice (config.json)"
    options = {g: cfg[f"{g}_options"] for g in ("model", "neuron", "surrogate", "loss", "dataset")}
    body = "\n".join([
        f"# {title}", "",
        f"A spiking neural network trained with {LIBRARY} (snnTorch-based) by {recipe}"
        + (" (the closest recipe command; the flags are this run's changes)." if flags else "."),
        f"These weights are the {hub_config['weights']['selected']}'s (epoch {hub_config['weights']['epoch']}).", "",
        "## Results (this run, not published numbers)", "",
        "| measure | value |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows], "",
        "Energy [reconstructed; the usual convention]: E_MAC = 4.6 pJ, E_AC = 0.9 pJ per operation, input rates "
        "measured on the first test batch (`repro.energy`, docs/diagnostics.md section \"Energy\")." if energy
        else "Energy: not measured for this run.", "",
        "## Published number", "",
        f"{published.text} {published.source} ({published.method}, {published.dataset}, {published.model})"
        if published else "None listed for this exact recipe command (REPRODUCTION.md lists the published ones).", "",
        "## Method and data", "",
        f"- model `{cfg['model']}` {options['model'] or ''}, T = {cfg['num_steps']}",
        f"- neuron `{cfg['neuron']}` {options['neuron'] or ''}",
        f"- surrogate `{cfg['surrogate']}` {options['surrogate'] or ''}",
        f"- loss `{cfg['loss']}` {options['loss'] or ''}",
        f"- data `{cfg['dataset']}` ({hub_config['modality']}, {hub_config['num_classes']} classes, "
        f"{hub_config['in_channels']} input channels) {options['dataset'] or ''}",
        f"- {cfg['optimizer']}, lr {cfg['lr']}, batch {cfg['batch_size']} per process, {cfg['epochs']} epochs, "
        f"{cfg['schedule']} schedule, weight decay {cfg['weight_decay']}", "",
        "## Which parts are reconstructed", "",
        *([f"- {note}" for note in notes] or [f"- {no_notes}."]),
        *(["- this run's own changes: " + " ".join(flags)] if flags else []), "",
        "## Use", "",
        "```python",
        "from repro.hub import from_pretrained",
        f"model = from_pretrained({json.dumps(repo_id or 'PATH_OR_HUB_ID')})  # eval mode",
        "logits = model(inputs)  # inputs as repro.datasets.to_model_input gives them",
        "```", "",
    ])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
