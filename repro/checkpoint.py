"""Atomic checkpoints: write to a temporary file in the same directory, fsync, then rename, so a
kill at any moment leaves either the previous complete checkpoint or the new one.  Checkpoints with a
non-finite weight or optimiser value are never written, and a run directory is locked while a run
writes to it."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

TEMP_SUFFIX = ".tmp"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that cannot be read."""


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 -> the usual mode of a new file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files of writes that a kill interrupted (``.NAME.XXXX.tmp``)."""
    stale = [p for p in Path(directory).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink()
    return stale


def first_nonfinite(tree: Any, prefix: str = "") -> str | None:
    """The name of the first floating-point tensor holding NaN/inf in nested dicts/lists (a state dict,
    an optimiser state), or None."""
    if isinstance(tree, torch.Tensor):
        return prefix if tree.is_floating_point() and not torch.isfinite(tree).all() else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        found = first_nonfinite(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return None


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically; refuses (FloatingPointError) if its ``model`` or ``optimizer`` entry holds
    a non-finite value, so the previous checkpoint stays."""
    bad = first_nonfinite({k: state[k] for k in ("model", "optimizer") if k in state})
    if bad:
        raise FloatingPointError(f"not writing {path}: {bad} is non-finite")
    atomic_write(path, lambda f: torch.save(state, f))


@contextlib.contextmanager
def lock_run_directory(directory: str | Path, holder: bool = True):
    """Hold an exclusive lock on ``directory/.lock`` (only where ``holder``: the main process) for the
    run; a second run on the same directory fails at once with a message.  The OS drops the lock when
    the process ends, killed or not, so a resume after a kill is never blocked."""
    if not holder:
        yield
        return
    path = Path(directory) / ".lock"
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder_pid = lock.read().strip()  # empty while the holder is still writing it
            raise FileExistsError(
                f"{directory} is in use by another run{f' (pid {holder_pid})' if holder_pid else ''}; wait for it "
                "or choose another --output_dir. Two processes that each run alone on it usually come from launching "
                "several processes without a distributed backend: on CPU use ACCELERATE_USE_CPU=true "
                "accelerate launch --multi_gpu --num_processes N") from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def save_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True).encode()))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (tensors and plain containers only: ``weights_only=True``,
    so a file cannot run code when loaded), with an error that says what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; run without --resume to start a new run, "
                                "or point --output_dir at the run directory to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CorruptCheckpointError(f"checkpoint {path} is corrupted or not a snn-repro checkpoint (it may also "
                                     "hold objects other than tensors and plain containers, which are not loaded: "
                                     f"{' '.join(str(error).split())[:300]}); "
                                     "delete it to restart the run, or restore it from a backup") from error
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CorruptCheckpointError(f"checkpoint {path} is not a snn-repro checkpoint (missing 'model' or 'epoch')")
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
