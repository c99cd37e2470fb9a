"""Reading dataset files with errors that say what is wrong and how to fix it.

- A missing dataset raises :class:`DatasetNotFoundError` naming the root searched, the expected
  directory layout and how to get the data (never a download unless ``download=True``).
- A file that exists but cannot be decoded (truncated, partially extracted, corrupted) raises
  :class:`CorruptFileError` naming that file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they are expected."""


class CorruptFileError(RuntimeError):
    """A dataset file exists but cannot be read."""


def not_found(name: str, root: str | Path, missing: Iterable[str | Path], layout: str, how_to_get: str
              ) -> DatasetNotFoundError:
    missing = [str(path) for path in missing]
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return DatasetNotFoundError(
        f"{name}: not found under root {str(Path(root).resolve())!r} (missing: {shown}).\n"
        f"Expected layout:\n{layout.rstrip()}\nHow to get it: {how_to_get}"
    )


def require(paths: Iterable[Path], name: str, root: str | Path, layout: str, how_to_get: str) -> None:
    """Raise :class:`DatasetNotFoundError` listing every path in ``paths`` that does not exist."""
    missing = [path for path in paths if not path.exists()]
    if missing:
        raise not_found(name, root, missing, layout, how_to_get)


def corrupt(path: str | Path, error: BaseException, fix: str = "delete it and extract the archive again") -> CorruptFileError:
    return CorruptFileError(f"cannot read {str(path)!r} ({type(error).__name__}: {error}); the file looks "
                            f"truncated, partially extracted or corrupted: {fix}")


def read_image(path: str | Path, mode: str | None = "RGB") -> Image.Image:
    """Decode an image fully (so truncation is caught here), converted to ``mode``; ``mode=None``
    keeps the stored mode (label PNGs: palette indices / grey levels are the class ids)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode and image.mode != mode else image.copy()
    except (OSError, ValueError, SyntaxError) as error:
        raise corrupt(path, error) from error


def read_label_map(path: str | Path) -> np.ndarray:
    """A label PNG as a uint8 [H, W] array of class ids (palette indices for VOC, grey for ADE20K)."""
    labels = np.asarray(read_image(path, mode=None))
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise corrupt(path, ValueError(f"a label map must be 8-bit single-channel, got {labels.dtype} "
                                       f"with shape {labels.shape}"))
    return labels
