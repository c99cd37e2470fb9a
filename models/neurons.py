"""Multi-step leaky integrate-and-fire neurons with both snnTorch's and the reference codes'
conventions (docs/methods.md section "Neuron conventions").

One step, x = input current I[t], lambda = decay, theta = threshold, s~ = previous spike
(detached if ``reset_detach``)::

    zero reset      u[t] = lambda * u[t-1] * (1 - s~[t-1]) + c * I[t]
    subtract reset  u[t] = lambda * (u[t-1] - theta * s~[t-1]) + c * I[t]   (reset_decayed=True)
                    u[t] = lambda * u[t-1] + c * I[t] - theta * s~[t-1]     (reset_decayed=False, snnTorch)
    fire            s[t] = H(u[t] - theta)   with H(0) = 1 if fire_ge else 0

with c = 1 - lambda if ``decay_input`` (spikingjelly's LIF) else 1, u[-1] = 0, s[-1] = 0.
``u`` is the pre-reset membrane, as snnTorch returns it.

Presets [reconstructed naming]:
- ``snntorch``: strict ``>``, detached reset, lambda = clamp(beta, 0, 1), subtract after decay.
  Numerically equal to ``snntorch.Leaky`` (tested).
- ``reference`` (MPD-AGL / DS-ATGO code): ``>=``, reset not detached, lambda = sigmoid(w).

Multi-step mode (default): ``forward(x[T, B, ...]) -> spikes[T, B, ...]``.  The whole time
loop runs inside one call and the state starts at zero every call, so nothing leaks between
batches or processes and no reset call is ever needed (DDP-safe: no state buffers).
Single-step mode: ``spk, mem = neuron(x[B, ...], mem)`` as with snnTorch.  In single-step
mode the previous spike is recomputed from ``mem`` (detached, like snnTorch) unless passed
as ``spk=``.
Neuron state and surrogate maths run in fp32 whatever the input dtype (AMP).
Multi-step forwards take the fused path of ``models/fused.py`` (one autograd Function for the
whole time loop, bitwise-equal spikes, far fewer saved tensors) when ``fused`` is on and the
configuration allows it, else this reference loop (the oracle), logging the reason once.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ..surrogates import Surrogate, create_surrogate
from .dynamics import charge
from .fused import forward_eagerly, fused_lif, observed_under_compile, report_fallback, unfused_reason

PRESETS = {
    "snntorch": dict(fire_ge=False, reset_detach=True, decay_param="clamp", reset_decayed=False),
    "reference": dict(fire_ge=True, reset_detach=False, decay_param="sigmoid", reset_decayed=True),
}


def _logit(p: float) -> float:
    return -math.log(1.0 / p - 1.0)


class SpikingNeuron(nn.Module):
    """Base of every spiking neuron of the suite: ``forward(x[T, B, ...]) -> spikes[T, B, ...]``,
    state starting at zero in every call.  Diagnostics and losses find neurons by this type.

    - ``input_norm``: the BN that feeds this neuron (set by the model with ``set_input_norm``;
      MPD-AGL's width reads its gamma), and ``input_layer``: the conv / linear that feeds that BN
      (A2SG's ``tgc_source="weight_grad"`` hooks it).  Kept outside the module tree so they are not
      registered twice.
    - ``record_potentials``: when True, every forward stores the pre-fire membrane of each step
      (not detached, so losses can train through it) in ``potentials`` (a list of T tensors).
    """

    record_potentials: bool = False

    @property
    def input_norm(self) -> nn.Module | None:
        return self.__dict__.get("_input_norm", (None,))[0]

    @property
    def input_layer(self) -> nn.Module | None:
        return self.__dict__.get("_input_layer", (None,))[0]

    def set_input_norm(self, module: nn.Module | None, input_layer: nn.Module | None = None) -> None:
        """(nn.Module.__setattr__ would register the modules as submodules, hence a method.)"""
        self.__dict__["_input_norm"] = (module,)
        self.__dict__["_input_layer"] = (input_layer,)

    def record(self, potential: Tensor, step: int | None) -> None:
        if self.record_potentials:
            if step == 0 or step is None or not hasattr(self, "potentials"):
                self.potentials = []
            self.potentials.append(potential)

    def record_steps(self, potentials: Tensor) -> None:
        """The fused paths' ``record``: potentials [T, ...] (with graph) become the list of T steps."""
        self.potentials = list(potentials.unbind(0))


class LIF(SpikingNeuron):
    """Leaky integrate-and-fire neuron (see module docstring for the equations).

    Args:
        decay: lambda (snnTorch's beta), in (0, 1]; for ``decay_param="sigmoid"`` in (0, 1).
        threshold: theta.
        surrogate: a ``Surrogate``, or a surrogate name (a fresh instance is built).
        surrogate_kwargs: options for a surrogate given by name.
        preset: ``snntorch`` or ``reference``; sets the four switches below unless given.
        fire_ge, reset_detach, decay_param (``clamp`` | ``sigmoid``), reset_decayed: see above.
        decay_learnable: learn the decay (one scalar per layer).
        decay_input: scale the input by (1 - lambda) (spikingjelly's ``decay_input``).
        reset: ``zero`` | ``subtract`` | ``none``.
        num_steps: if set, multi-step input must have this many timesteps.
        step_mode: ``multi`` or ``single``.
        fused: run multi-step forwards through the fused path where supported (``models/fused.py``);
            False always runs the reference loop.
        triton: inside the fused path, use the Triton kernels (``models/triton_lif.py``) on CUDA for a
            fixed threshold and fixed surrogate parameters; False keeps the fused path's torch code.
        saved_precision: what the fused path keeps for backward: ``fp32`` (default) the input, exact;
            ``fp16`` the margin u - theta_t in half precision (half the bytes; spikes and reset masks
            stay exact, the surrogate derivative and the membrane-dependent terms are evaluated on the
            rounded margin, about 5e-4 relative; no double backward) [ours, an option for memory-bound
            training].
    """

    def __init__(
        self,
        decay: float = 0.5,
        threshold: float = 1.0,
        surrogate: Surrogate | Callable | str = "atan",
        surrogate_kwargs: dict | None = None,
        preset: str = "snntorch",
        fire_ge: bool | None = None,
        reset_detach: bool | None = None,
        decay_param: str | None = None,
        reset_decayed: bool | None = None,
        decay_learnable: bool = False,
        decay_input: bool = False,
        reset: str = "zero",
        num_steps: int | None = None,
        step_mode: str = "multi",
        fused: bool = True,
        triton: bool = True,
        saved_precision: str = "fp32",
    ):
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"unknown neuron preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        defaults = PRESETS[preset]
        self.preset = preset
        self.fire_ge = defaults["fire_ge"] if fire_ge is None else fire_ge
        self.reset_detach = defaults["reset_detach"] if reset_detach is None else reset_detach
        self.decay_param = defaults["decay_param"] if decay_param is None else decay_param
        self.reset_decayed = defaults["reset_decayed"] if reset_decayed is None else reset_decayed
        if reset not in ("zero", "subtract", "none"):
            raise ValueError(f"reset must be 'zero', 'subtract' or 'none', got {reset!r}")
        if saved_precision not in ("fp32", "fp16"):
            raise ValueError(f"saved_precision must be 'fp32' or 'fp16', got {saved_precision!r}")
        if step_mode not in ("multi", "single"):
            raise ValueError(f"step_mode must be 'multi' or 'single', got {step_mode!r}")
        if self.decay_param == "sigmoid":
            if not 0.0 < decay < 1.0:
                raise ValueError(f"decay must be in (0, 1) for decay_param='sigmoid', got {decay}")
            raw = _logit(decay)
        elif self.decay_param == "clamp":
            if not 0.0 < decay <= 1.0:
                raise ValueError(f"decay must be in (0, 1], got {decay}")
            raw = decay
        else:
            raise ValueError(f"decay_param must be 'clamp' or 'sigmoid', got {self.decay_param!r}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        raw = torch.tensor(float(raw))
        if decay_learnable:
            self.decay_raw = nn.Parameter(raw)
        else:
            self.register_buffer("decay_raw", raw)
        self.threshold = float(threshold)
        self.decay_input = decay_input
        self.reset = reset
        self.num_steps = num_steps
        self.step_mode = step_mode
        self.fused, self.triton, self.saved_precision = bool(fused), bool(triton), saved_precision
        if isinstance(surrogate, str):
            surrogate = create_surrogate(surrogate, **(surrogate_kwargs or {}))
        self.surrogate = surrogate

    @property
    def decay(self) -> Tensor:
        """lambda, differentiable w.r.t. the decay parameter when it is learnable."""
        if self.decay_param == "sigmoid":
            return torch.sigmoid(self.decay_raw)
        return self.decay_raw.clamp(0.0, 1.0)

    def fire_context(self, u: Tensor, step: int | None) -> tuple[float | Tensor, dict]:
        """(theta_t, surrogate context) of this step: the fixed threshold here.  A subclass with a
        per-step threshold overrides this (not ``fire``) and keeps the fused path; theta_t must be
        detached (it receives no gradient)."""
        return self.threshold, dict(mem=u, step=step, neuron=self)

    @property
    def fixed_threshold(self) -> bool:
        """Whether theta_t is the constant ``threshold`` (``fire_context`` not overridden): the fused path then
        computes the spikes without calling the surrogate."""
        return type(self).fire_context is LIF.fire_context

    def unfused_reason(self, x: Tensor) -> str | None:
        """Why this forward on ``x`` cannot take the fused path (None: it can): a subclass overriding ``step`` or
        ``fire``, which the fused path replaces, or a reason of the path (``fused.unfused_reason``)."""
        for method in ("step", "fire"):
            if getattr(type(self), method) is not getattr(LIF, method):
                return f"{type(self).__name__} overrides {method}() (override fire_context() to keep the fused path)"
        return unfused_reason(self, x)

    def fire(self, u: Tensor, step: int | None) -> Tensor:
        """Spike of the pre-reset membrane; the surrogate gets the neuron's context."""
        self.record(u, step)
        threshold, context = self.fire_context(u, step)
        x = u - threshold
        if isinstance(self.surrogate, Surrogate):
            return self.surrogate(x, fire_ge=self.fire_ge, **context)
        return self.surrogate(x)  # a plain snnTorch-style callable

    def step(self, x: Tensor, mem: Tensor, spk: Tensor, decay: Tensor, t: int | None):
        """One timestep: (input, previous pre-reset membrane, previous spike) -> (spike, membrane)."""
        mem = charge(x, mem, spk, decay, self.threshold, self.reset, self.reset_decayed, self.reset_detach,
                     self.decay_input)
        return self.fire(mem, t), mem

    def forward(self, x: Tensor, mem: Tensor | None = None, spk: Tensor | None = None):
        if observed_under_compile(self.surrogate):
            return forward_eagerly(self, x, mem, spk)
        dtype = x.dtype
        decay = self.decay.float()
        if self.step_mode == "single":
            x = x.float()
            if mem is None:
                mem = torch.zeros_like(x)
            if spk is None:
                spk = (mem - self.threshold >= 0 if self.fire_ge else mem - self.threshold > 0).float()
            spk, mem = self.step(x, mem.float(), spk.float(), decay, None)
            return spk.to(dtype), mem
        if mem is not None or spk is not None:
            raise TypeError("a multi-step neuron starts from zero state; pass mem/spk only with step_mode='single'")
        if x.dim() < 2:
            raise ValueError(f"multi-step neurons expect [T, B, ...] input, got shape {tuple(x.shape)}")
        if self.num_steps is not None and x.shape[0] != self.num_steps:
            raise ValueError(
                f"this neuron was built for T={self.num_steps} timesteps but got input with "
                f"T={x.shape[0]} (shape {tuple(x.shape)}, expected [T, B, ...]); "
                "rebuild the model with num_steps matching the data"
            )
        if self.fused:
            reason = self.unfused_reason(x)
            if reason is None:  # bf16 / fp16 input as it is: fp32 inside, spikes in the input's dtype
                return fused_lif(self, x, decay).to(dtype)
            if not torch.compiler.is_compiling():  # under torch.compile the traced loop is the intended path
                report_fallback(self, reason)
        x = x.float()
        mem = torch.zeros_like(x[0])
        spk = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            spk, mem = self.step(x[t], mem, spk, decay, t)
            out.append(spk)
        return torch.stack(out).to(dtype)

    def extra_repr(self) -> str:
        return (
            f"preset={self.preset}, threshold={self.threshold}, decay={self.decay.item():.3g}, "
            f"decay_param={self.decay_param}, learnable={isinstance(self.decay_raw, nn.Parameter)}, "
            f"fire_ge={self.fire_ge}, reset={self.reset}, reset_detach={self.reset_detach}, "
            f"reset_decayed={self.reset_decayed}, decay_input={self.decay_input}, fused={self.fused}"
            + (f", saved_precision={self.saved_precision}" if self.saved_precision != "fp32" else "")
        )


def lif(**kwargs) -> LIF:
    """LIF with a fixed decay (default 0.5, tau = 2) and snnTorch's conventions."""
    return LIF(**kwargs)


def plif(decay: float = 0.5, preset: str = "reference", **kwargs) -> LIF:
    """Parametric LIF with a learnable decay, one per layer, in the reference codes' form:
    lambda = sigmoid(w), u[t] = lambda u[t-1] + I[t] [reference code: MPD-AGL, DS-ATGO, with lambda0 = 0.2].
    Fang et al. (ICCV 2021) learn 1/tau = sigmoid(a) and scale the input, u[t] = (1 - 1/tau) u[t-1] + I[t]/tau
    [published]; that form is ``plif(decay_input=True)`` (lambda = 1 - 1/tau), and it fires differently
    (docs/methods.md section "Neuron conventions")."""
    kwargs.setdefault("decay_param", "sigmoid")
    return LIF(decay=decay, preset=preset, decay_learnable=True, **kwargs)
