"""The spiking-layer Triton kernels at their launch sites, for the benchmarks that watch or replace their launches
(``step_counts.py`` counts them, ``kernel_resources.py`` records and compiles them)."""
from __future__ import annotations

import contextlib
from typing import Callable

from repro.models import triton_cf, triton_lif

# site -> (module, attribute) of each kernel the spiking layers launch
LAUNCH_SITES = {"forward": (triton_lif, "_forward_kernel"), "backward": (triton_lif, "_backward_kernel"),
                "cf_forward": (triton_cf, "_cf_forward_kernel"), "cf_backward": (triton_cf, "_cf_backward_kernel")}


class Launches:
    """Stands for one kernel at its launch site: ``kernel[grid](*args, **kwargs)`` returns
    ``on_launch(site, kernel, grid, args, kwargs)``."""

    def __init__(self, site: str, kernel, on_launch: Callable):
        self.site, self.kernel, self.on_launch = site, kernel, on_launch

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.on_launch(self.site, self.kernel, grid, args, kwargs)


@contextlib.contextmanager
def launches_to(on_launch: Callable):
    """Within the block, every launch of a ``LAUNCH_SITES`` kernel calls ``on_launch`` instead (which may launch it:
    ``kernel[grid](*args, **kwargs)``)."""
    kernels = {site: getattr(module, name) for site, (module, name) in LAUNCH_SITES.items()}
    for site, (module, name) in LAUNCH_SITES.items():
        setattr(module, name, Launches(site, kernels[site], on_launch))
    try:
        yield
    finally:
        for site, (module, name) in LAUNCH_SITES.items():
            setattr(module, name, kernels[site])
