"""Sharing trained SNNs through the Hugging Face Hub (the folder layout of ``repro.export``).

    python -m repro.hub export RUN_DIR [--weights best]   # rewrite RUN_DIR/pretrained/ (e.g. for an older run)
    python -m repro.hub push RUN_DIR USER/NAME [--private]  # upload RUN_DIR/pretrained/ to a model repository

    from repro.hub import from_pretrained
    model = from_pretrained("runs/ds_atgo_cifar10/pretrained")   # a local folder
    model = from_pretrained("USER/NAME")                          # a hub repository holding that folder

``from_pretrained`` rebuilds the model through the engine's ``build_model`` from config.json's
``training_config`` (and the data's classes and input channels), then loads model.safetensors strictly.  Only
tensors are read (safetensors), never pickled objects.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from safetensors.torch import load_model
from torch import nn

from .checkpoint import load_checkpoint
from .config import Config
from .engine import RESUMABLE_CHANGES, build_dataset, build_model
from .export import CARD_NAME, CONFIG_NAME, LIBRARY, PRETRAINED_DIR, WEIGHTS_NAME, model_card, save_pretrained


def pretrained_file(path_or_hub_id: str | Path, filename: str, revision: str | None = None, **hub_kwargs) -> Path:
    """``filename`` of a local pretrained folder, or of a hub repository (downloaded into the hub cache;
    ``hub_kwargs`` go to ``hf_hub_download``, e.g. ``cache_dir``, ``token``)."""
    local = Path(path_or_hub_id)
    if local.is_dir():
        if not (local / filename).is_file():
            raise FileNotFoundError(f"{local} has no {filename}; a pretrained folder holds {CONFIG_NAME} and "
                                    f"{WEIGHTS_NAME} (a run writes them to RUN_DIR/{PRETRAINED_DIR}/)")
        return local / filename
    return Path(hf_hub_download(str(path_or_hub_id), filename, revision=revision, **hub_kwargs))


def load_config(path_or_hub_id: str | Path, revision: str | None = None, **hub_kwargs) -> dict:
    """config.json of a pretrained folder or hub repository."""
    hub_config = json.loads(pretrained_file(path_or_hub_id, CONFIG_NAME, revision, **hub_kwargs).read_text())
    if hub_config.get("library") != LIBRARY:
        raise ValueError(f"{path_or_hub_id} is not an {LIBRARY} model (config.json library "
                         f"{hub_config.get('library')!r}); load it with the library that wrote it")
    return hub_config


def from_pretrained(path_or_hub_id: str | Path, revision: str | None = None, **hub_kwargs) -> nn.Module:
    """The trained model of a pretrained folder or hub repository, in eval mode on the CPU; its config.json
    is ``model.pretrained_config``."""
    hub_config = load_config(path_or_hub_id, revision, **hub_kwargs)
    config = Config.from_dict(hub_config["training_config"], source=f"{path_or_hub_id} config.json")
    model = build_model(config, SimpleNamespace(num_classes=hub_config["num_classes"],
                                                in_channels=hub_config["in_channels"]))
    load_model(model, str(pretrained_file(path_or_hub_id, WEIGHTS_NAME, revision, **hub_kwargs)), strict=True)
    model.pretrained_config = hub_config
    return model.eval()


def export_run(run_dir: str | Path, weights: str = "final") -> Path:
    """Write ``run_dir/pretrained/`` from a finished run's checkpoint (``final``: checkpoint.pt, the last
    epoch's weights, as the run's end writes them; ``best``: best_model.pt, the best test epoch's)."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        raise FileNotFoundError(f"{run_dir} has no summary.json: not a finished run (resume it first)")
    if weights not in ("final", "best"):
        raise ValueError(f"--weights must be 'final' or 'best', got {weights!r}")
    summary = json.loads((run_dir / "summary.json").read_text())
    state = load_checkpoint(run_dir / ("checkpoint.pt" if weights == "final" else "best_model.pt"))
    config = Config.from_dict(state["config"], source=str(run_dir))
    dataset = build_dataset(config, "test")
    model = build_model(config, dataset)
    model.load_state_dict(state["model"])
    selected = {"selected": "final epoch" if weights == "final" else "best test epoch", "epoch": state["epoch"]}
    return save_pretrained(model, run_dir / PRETRAINED_DIR, config, dataset, summary, RESUMABLE_CHANGES, selected)


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                revision: str | None = None, commit_message: str = f"Upload {LIBRARY} model",
                create_pr: bool = False):
    """Upload a pretrained folder (or a run directory's ``pretrained/``) to the model repository ``repo_id``
    (created if missing), with its model card's usage line naming ``repo_id``.  Returns the commit info."""
    folder = Path(folder)
    if (folder / PRETRAINED_DIR / CONFIG_NAME).is_file():
        folder = folder / PRETRAINED_DIR
    hub_config = load_config(folder)  # fails on a folder that is not a pretrained folder, before any upload
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    card = str(model_card(hub_config, repo_id)).encode()
    operations = [CommitOperationAdd(name, str(folder / name)) for name in (CONFIG_NAME, WEIGHTS_NAME)]
    operations.append(CommitOperationAdd(CARD_NAME, card))
    return api.create_commit(repo_id, operations, commit_message=commit_message, repo_type="model",
                             revision=revision, create_pr=create_pr)

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write RUN_DIR/pretrained/ from the run's checkpoint")
    export.add_argument("run_dir")
    export.add_argument("--weights", choices=("final", "best"), default="final")
    push = commands.add_parser("push", help="upload a pretrained folder (or RUN_DIR/pretrained/) to the hub")
    push.add_argument("folder")
    push.add_argument("repo_id", help="USER/NAME of the model repository")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            print(f"wrote {export_run(args.run_dir, args.weights)}")
        else:
            print(push_to_hub(args.folder, args.repo_id, private=args.private or None, revision=args.revision))
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
