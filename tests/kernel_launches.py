"""Helpers of the Triton kernel tests (tests/test_triton_lif.py, tests/test_triton_cf.py) and of the launch counts
of the torch code (tests/test_a2sg_paper.py)."""
import collections
import os
import subprocess
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LaunchCounter:
    """Counts launches of the kernels ``names`` of ``module`` (monkeypatched module attributes)."""

    def __init__(self, monkeypatch, module, names):
        self.launches = []
        for name in names:
            monkeypatch.setattr(module, name, self._counting(name, getattr(module, name)))

    def _counting(self, name, kernel):
        counter = self

        class Counting:
            def __getitem__(self, grid):
                counter.launches.append(name)
                return kernel[grid]
        return Counting()


class OperationCounter(TorchDispatchMode):
    """Counts the aten operations that compute (not views; on a GPU, one kernel launch each) in ``count``, and
    every operation by name in ``names``; ``host_reads()`` those that wait for a GPU's device."""

    # on a GPU each waits for the device: a host read of a value (.item(), bool(tensor)), a shape that depends on
    # the data, a tensor made from host data (torch.tensor)
    HOST_READS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique2",
                  "aten.lift_fresh")

    def __init__(self):
        super().__init__()
        self.count, self.names = 0, collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        self.names[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    def host_reads(self) -> dict[str, int]:
        """The counted operations that wait for the device on a GPU (``HOST_READS``), by name."""
        return {name: self.names[name] for name in self.HOST_READS if self.names[name]}


def grads_of(neuron, x, upstream):
    """The neuron's output on ``x`` and the gradients of (x, the neuron's trainable parameters) for ``upstream``."""
    inputs = x.clone().requires_grad_()
    out = neuron(inputs)
    params = [inputs] + [p for p in neuron.parameters() if p.requires_grad]
    return out, torch.autograd.grad(out, params, upstream)


def run_in_triton_interpreter(path: str, deselect: str) -> None:
    """Run the test file ``path`` with ``TRITON_INTERPRET=1`` in a subprocess (the variable is read when the kernels
    are decorated, so this process never sees it), deselecting ``-k`` expression ``deselect``; assert that all of
    it passed and nothing was skipped."""
    result = subprocess.run(
        # -P: the checkout's repro/ folder must not shadow an installed (non-editable) package, e.g. on a GPU machine
        [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", "pytest", "-q", "-p",
         "no:cacheprovider", "-k", deselect, path],
        env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    output = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert " passed" in result.stdout and "skipped" not in result.stdout, output
