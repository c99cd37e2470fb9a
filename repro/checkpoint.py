"""Atomic checkpoints: write to a temporary file in the same directory, fsync, then rename, so a
kill at any moment leaves either the previous complete checkpoint or the new one."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def save_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True).encode()))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``, with an error that says what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; run without --resume to start a new run, "
                                "or point --output_dir at the run directory to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise RuntimeError(f"checkpoint {path} is corrupted or not a snn-repro checkpoint ({error}); "
                           "delete it to restart the run, or restore it from a backup") from error
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise RuntimeError(f"checkpoint {path} is not a snn-repro checkpoint (missing 'model' or 'epoch')")
    return state


def load_pretrained(model, path: str | Path) -> tuple[list[str], list[str]]:
    """Initialise ``model`` from a checkpoint of this suite (``checkpoint.pt`` or ``best_model.pt``) before
    training.  A model with its own ``load_pretrained`` (segmentation: the encoder from a classification
    backbone) uses it; any other model copies the entries whose names match.  Shape mismatches are errors
    (e.g. per-timestep buffers of a checkpoint trained with another T).  Returns (missing, unexpected) keys."""
    state = load_checkpoint(path)["model"]
    if hasattr(model, "load_pretrained"):
        report = model.load_pretrained(state)
        return list(report[0]), list(report[1])
    own = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"--pretrained {path} does not fit this model ({'; '.join(wrong[:5])}); build the model "
                         "with the checkpoint's settings (model, width, num_classes, num_steps)")
    result = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return list(result.missing_keys), sorted(set(state) - set(own))
