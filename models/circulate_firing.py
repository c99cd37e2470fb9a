"""Circulate-firing (CF) neurons (Zhou et al., arXiv 2605.27412; docs/methods.md section "Circulate-firing
neurons, learnable surrogate, balanced loss").  [published]: the CF neuron uses the
membrane potential more fully than a conventional neuron, and the sign of the potential matters.
Every equation below is [reconstructed].

For t = 1..T, input current I_t, U_0 = 0, beta = 1 - 1/tau::

    charge  H_t = beta U_{t-1} + I_t
    fire    S_t = (number of up-crossings) - (number of down-crossings)          (see modes)
    reset   U_t = H_t - r (up_t - down_t)                 soft reset: the residual is kept

``mode``:
- ``signed`` (default): up-crossings H >= j theta, down-crossings -H >= j theta, j = 1..D, r = theta, so
  S_t = sign(H_t) min(floor(|H_t| / theta), D) in {-D..D} ("fire, subtract theta, re-check" up to D
  times).  While |H| < (D+1) theta, |U| < theta; beyond that the surplus carries over (saturation).
- ``unsigned``: up-crossings only, S_t = min(floor(max(H_t, 0) / theta), D); no lower clamp on U.
- ``wrap_signed`` / ``wrap_binary``: the potential lives on the ring [-theta, theta): up-crossings
  H >= (2j-1) theta, down-crossings H < -(2j-1) theta, r = 2 theta; j = 1 only (``wrap_mode=single``)
  or j = 1..D (``wrap_mode=modulo``: wraps until U is back on the ring, at most D times).  The output
  is up - down (``wrap_signed``) or up (``wrap_binary``: downward wraps emit 0; with ``modulo`` the
  count of upward wraps).

Special cases: D = 1 unsigned = soft-reset LIF with the reference conventions (fire on >=, reset attached and
decayed with the membrane: ``LIF(preset="reference", reset="subtract")``, equal spike for spike, tested);
D = 1 signed = ternary neuron.

Spikes come from the surrogate, one Heaviside per level crossing x (e.g. x = H - j theta), so the
forward is the exact integer staircase and the backward puts one bump at every crossing:
dS/dH = sum_j h(H - j theta) + h(-H - j theta) for ``signed``.  With the TLSG surrogate
(``learnable``, the default) the sum is S_exact + phi_k(H) - stopgrad(phi_k(H)) with
phi_k(H) = sum_j [sigmoid(k(H - j theta)) - sigmoid(k(-H - j theta))], so k[l, t] learns; any other
``Surrogate`` (sigmoid, atan, mpd_agl, ...) also works.  The neuron tells the surrogate T and beta
(``bind_neuron``) when it has that method.

Options: ``D``, ``theta``, ``tau``, ``reset_detach`` (stop the gradient through the reset term;
False for CNNs, True inside Spikformer), ``wrap_mode``, ``output_scale`` (``S``: the next layer gets
S_t; ``theta_S``: theta S_t).  Multi-step only: ``forward(x[T, B, ...]) -> S[T, B, ...]``, state from
zero at every call, maths in fp32.  ``record`` stores H_t (``recorded_potential="pre_fire"``) or U_t
(``"post_reset"``) when ``record_potentials`` is set (the balanced loss sets both).

``fused`` (default True): the forward runs the whole time loop in one autograd Function
(``models/fused_cf.py``: bitwise-equal outputs, only the input saved for backward) when the configuration
allows it (recorded potentials included: the Function returns them too); otherwise (observers, an
unsupported surrogate, ``torch.compile`` tracing) the reference loop of ``forward`` runs (the oracle) and
the reason is logged once.  Under ``torch.compile`` a surrogate with per-call side effects runs eagerly
(``fused.forward_eagerly``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..surrogates import Surrogate, create_surrogate
from .dynamics import CROSSING_SLOPES, CFConfig, crossing_inputs, discharge
from .fused import forward_eagerly, observed_under_compile, report_fallback
from .fused_cf import fused_cf, unfused_reason
from .neurons import SpikingNeuron

MODES = ("signed", "unsigned", "wrap_signed", "wrap_binary")
WRAP_MODES = ("single", "modulo")
OUTPUT_SCALES = ("S", "theta_S")


class CFNeuron(SpikingNeuron):
    """Multi-level circulate-firing neuron (see module docstring)."""

    RECORDABLE_POTENTIALS = ("pre_fire", "post_reset")

    def __init__(self, mode: str = "signed", D: int = 4, theta: float = 1.0, tau: float = 2.0,
                 reset_detach: bool = False, wrap_mode: str = "single", output_scale: str = "S",
                 surrogate: Surrogate | str = "learnable", surrogate_kwargs: dict | None = None,
                 num_steps: int | None = None, fused: bool = True):
        super().__init__()
        for name, value, choices in (("mode", mode, MODES), ("wrap_mode", wrap_mode, WRAP_MODES),
                                     ("output_scale", output_scale, OUTPUT_SCALES)):
            if value not in choices:
                raise ValueError(f"circulate_firing: {name} must be one of {choices}, got {value!r}")
        if int(D) != D or D < 1:
            raise ValueError(f"circulate_firing: D (max spikes per step) must be an integer >= 1, got {D}")
        if not theta > 0:
            raise ValueError(f"circulate_firing: theta must be > 0, got {theta}")
        if not tau >= 1:
            raise ValueError(f"circulate_firing: tau must be >= 1 (beta = 1 - 1/tau in [0, 1)), got {tau}")
        if isinstance(surrogate, str):
            surrogate = create_surrogate(surrogate, **(surrogate_kwargs or {}))
        if not isinstance(surrogate, Surrogate):
            raise ValueError("circulate_firing needs a repro Surrogate (it passes fire_ge and the timestep), got "
                             f"{type(surrogate).__name__}; give a surrogate name such as 'learnable' or 'sigmoid'")
        self.mode, self.D, self.threshold, self.tau = mode, int(D), float(theta), float(tau)
        self.reset_detach, self.wrap_mode, self.output_scale = bool(reset_detach), wrap_mode, output_scale
        self.num_steps, self.fused = num_steps, bool(fused)
        self.recorded_potential = "pre_fire"
        self.register_buffer("decay", torch.tensor(1.0 - 1.0 / self.tau), persistent=False)
        wraps = mode.startswith("wrap")
        counts = torch.arange(1, (self.D if not wraps or wrap_mode == "modulo" else 1) + 1, dtype=torch.float32)
        self.register_buffer("levels", (2 * counts - 1 if wraps else counts) * self.threshold, persistent=False)
        self.reset_unit = (2.0 if wraps else 1.0) * self.threshold
        self.level_values = tuple(self.levels.tolist())  # at construction, on the CPU
        if hasattr(surrogate, "bind_neuron"):
            surrogate.bind_neuron(num_steps=num_steps, decay=float(self.decay))
        self.surrogate = surrogate

    def step_config(self) -> CFConfig:
        return CFConfig(self.mode, self.reset_unit, self.reset_detach,
                        self.threshold if self.output_scale == "theta_S" else 1.0, self.level_values)

    def forward(self, x: Tensor) -> Tensor:
        if observed_under_compile(self.surrogate):
            return forward_eagerly(self, x)
        if x.dim() < 2:
            raise ValueError(f"circulate_firing expects [T, B, ...] input, got shape {tuple(x.shape)}")
        if self.num_steps is not None and x.shape[0] != self.num_steps:
            raise ValueError(f"this neuron was built for T={self.num_steps} timesteps but got T={x.shape[0]} "
                             f"(shape {tuple(x.shape)}, expected [T, B, ...]); rebuild with matching num_steps")
        dtype = x.dtype
        if self.fused:
            reason = unfused_reason(self, x)
            if reason is None:  # bf16 / fp16 input as it is: the kernels read it in its own dtype
                return fused_cf(self, x).to(dtype)
            if not torch.compiler.is_compiling():  # under torch.compile the traced loop is the intended path
                report_fallback(self, reason)
        x = x.float()
        config = self.step_config()
        levels = self.levels.view(-1, *([1] * (x.dim() - 1)))
        potential = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            charged = self.decay * potential + x[t]
            if self.recorded_potential == "pre_fire":
                self.record(charged, t)
            # one surrogate call per direction: the sum over levels counts the crossings
            crossings = list(zip(crossing_inputs(charged, levels, self.mode), CROSSING_SLOPES))
            counts = [self.surrogate(shifted, fire_ge=fire_ge, mem=charged, mem_slope=slope, step=t, neuron=self,
                                     last_call=call == len(crossings) - 1).sum(0)
                      for call, ((shifted, fire_ge), slope) in enumerate(crossings)]
            potential, spikes = discharge(charged, counts, config)
            if self.recorded_potential == "post_reset":
                self.record(potential, t)
            out.append(spikes)
        return torch.stack(out).to(dtype)

    def extra_repr(self) -> str:
        wrap = f", wrap_mode={self.wrap_mode}" if self.mode.startswith("wrap") else ""
        return (f"mode={self.mode}, D={self.D}, theta={self.threshold}, tau={self.tau}{wrap}, "
                f"reset_detach={self.reset_detach}, output_scale={self.output_scale}, fused={self.fused}")


def circulate_firing(num_steps: int | None = None, surrogate: Surrogate | str = "learnable",
                     surrogate_kwargs: dict | None = None, mode: str = "signed", D: int = 4, theta: float = 1.0,
                     tau: float = 2.0, reset_detach: bool = False, wrap_mode: str = "single",
                     output_scale: str = "S", fused: bool = True) -> CFNeuron:
    """Circulate-firing neuron with our defaults (signed, D = 4, theta = 1, tau = 2) [reconstructed]."""
    return CFNeuron(mode, D, theta, tau, reset_detach, wrap_mode, output_scale, surrogate, surrogate_kwargs,
                    num_steps, fused)
