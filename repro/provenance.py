"""Where a run's numbers come from: the code's git commit and the accelerator's name, stored in summary.json."""
from __future__ import annotations

import subprocess
from pathlib import Path

import torch

CODE_DIR = Path(__file__).resolve().parents[1]


def code_commit() -> str | None:
    """Short commit of the code this process runs, ``+dirty`` when tracked files differ from it; None outside a
    git checkout (an installed wheel) or without git."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(CODE_DIR), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` for a CUDA device, ``cpu`` otherwise."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
