"""TLSG: a surrogate gradient with a learnable sharpness per (layer, timestep) (Zhou et al., arXiv
2605.27412; docs/methods.md section "Circulate-firing neurons, learnable surrogate, balanced loss").  All
details are [reconstructed]; the paper states only that the surrogate has learnable parameters at each
timestep [published].

Per level crossing x (x = u - threshold for a binary neuron; x = H - j*theta, -H - j*theta, ... for the
circulate-firing neuron, which sums one call per crossing), with the sharpness k = k[l, t]:

    forward   S(x)     = Heaviside(x)                                        (exact, no smoothing)
    proxy     psi_k(x) = sigmoid(k x)                         shape=sigmoid  (default)
                       = clamp(x k/4 + 1/2, 0, 1)             shape=rect     (width a = 4/k, a0 = 1)
                       = arctan(pi a x / 2) / pi + 1/2        shape=atan     (a = k/2, a0 = 2)
    backward  dS/dx    = psi_k'(x): peak k/4, area 1 for every shape (k = 4 gives peak 1)

``learn`` [reconstructed]:
- ``st_smooth`` (default): S_out = S_exact + psi_k(x) - stopgrad(psi_k(x)).  The value is the exact
  Heaviside, dS_out/dx = psi_k'(x) and dS_out/dk = d psi_k/dk, so k gets a real gradient by backprop.
- ``asgl_mix``: in training S_out = m S_exact + (1 - m) stopgrad(psi_k) + psi_k - stopgrad(psi_k) with
  m ~ Bernoulli(1 - asgl_p) per element and call; the gradient always flows through psi_k
  [reference code: ASGL-SNN ``EfficientNoisySpikeII``, Wang et al. ICML 2023; that code keeps one mask
  for all timesteps of a batch, here the mask is drawn per call].  Eval is exact.
- ``none``: k is not learned; the base ``SpikeFunction`` (Heaviside forward, psi_k' backward).

Parameters: k = k_min + softplus(rho), rho0 = softplus^-1(k0 - k_min) (k0 = 4: rho0 ~ 3.47).
``init=mpd`` starts the steps t >= 2 (1-based) at k0 / sqrt(1 + beta^2) (wider later steps, as in
MPD-AGL's reasoning).  ``granularity``: ``per_layer_t`` (default, rho[T]), ``per_layer`` (rho[1]),
``shared_t`` (rho[T] shared by all layers: the engine ties them through ``on_model_built``; elsewhere
call ``share_timestep_sharpness(model)`` after building the model, see below), ``fixed`` (k = k0, not learned).  rho is a Parameter when learned (buffer otherwise),
carries ``no_weight_decay = True`` and ``lr_mult``; ``after_optimizer_step`` clamps k <= k_max (k > k_min
holds by construction); ``on_epoch_start`` zeroes its gradient for the first ``freeze_epochs`` epochs.

How the surrogate learns T: the option ``num_steps``, or ``bind_neuron(num_steps, decay)``, which the
circulate-firing neuron calls when it receives the surrogate (it also passes beta for ``init=mpd``).
Inside our ``LIF`` (which does not bind) pass ``num_steps`` (``--surrogate.num_steps T``); a per-step
surrogate that does not know T raises at the first call with a step > 0.

Fallback without a timestep (a stock ``snntorch.Leaky`` calls ``spike_grad(mem - thr)`` only, or a
single-step neuron): the first step's k, k[0].
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Surrogate
from .classic import ATan, Rectangular, Sigmoid
from .closed_form import div, indicator, logistic

GRANULARITIES = ("per_layer_t", "per_layer", "shared_t", "fixed")
PER_STEP = ("per_layer_t", "shared_t")
LEARNING = ("st_smooth", "asgl_mix", "none")
INITS = ("const", "mpd")
QUARTER_PI = math.pi / 4


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))  # log(exp(y) - 1), stable for large y


class TimestepLearnableSurrogate(Surrogate):
    """Base of the three TLSG shapes; subclasses give the proxy ``primitive(x, k)`` (psi_k) and its
    derivative ``shape(x, k)`` (psi_k').  See the module docstring for the equations and options."""

    def __init__(self, granularity: str = "per_layer_t", learn: str = "st_smooth", k0: float = 4.0,
                 k_min: float = 0.5, k_max: float = 20.0, init: str = "const", lr_mult: float = 1.0,
                 freeze_epochs: int = 0, asgl_p: float = 0.5, num_steps: int | None = None,
                 decay: float | None = None):
        super().__init__()
        for name, value, choices in (("granularity", granularity, GRANULARITIES), ("learn", learn, LEARNING),
                                     ("init", init, INITS)):
            if value not in choices:
                raise ValueError(f"learnable surrogate: {name} must be one of {choices}, got {value!r}")
        if not 0.0 <= k_min < k0 <= k_max:
            raise ValueError(f"learnable surrogate needs 0 <= k_min < k0 <= k_max, got k_min={k_min}, k0={k0}, "
                             f"k_max={k_max}")
        if init == "mpd" and granularity not in PER_STEP:
            raise ValueError(f"init='mpd' varies k over timesteps; use granularity 'per_layer_t' or 'shared_t', "
                             f"not {granularity!r}")
        if not lr_mult > 0:
            raise ValueError(f"lr_mult must be > 0, got {lr_mult}")
        if freeze_epochs < 0:
            raise ValueError(f"freeze_epochs must be >= 0, got {freeze_epochs}")
        if not 0.0 <= asgl_p <= 1.0:
            raise ValueError(f"asgl_p (probability of a smooth forward value) must be in [0, 1], got {asgl_p}")
        self.granularity, self.learn, self.init = granularity, learn, init
        self.k0, self.k_min, self.k_max = float(k0), float(k_min), float(k_max)
        self.lr_mult, self.freeze_epochs, self.asgl_p = float(lr_mult), int(freeze_epochs), float(asgl_p)
        self.num_steps, self.decay = None, None
        self.frozen = self.freeze_epochs > 0
        self.tied = False  # shared_t: set by share_timestep_sharpness
        self.bind_neuron(num_steps, decay)

    @property
    def learned(self) -> bool:
        return self.learn != "none" and self.granularity != "fixed"

    @property
    def per_step(self) -> bool:
        return self.granularity in PER_STEP

    def bind_neuron(self, num_steps: int | None = None, decay: float | None = None) -> None:
        """Tell the surrogate T and the neuron's decay beta (for ``init=mpd``); rho is rebuilt only when its
        size or its mpd start changes.  A value given twice must agree.  Call before the optimiser is built
        (neurons call it at construction)."""
        for name, value in (("num_steps", num_steps), ("decay", decay)):
            current = getattr(self, name)
            if value is not None and current is not None and value != current:
                raise ValueError(f"learnable surrogate: {name}={current} was already set, the neuron now "
                                 f"says {value}; give the same value (or leave the surrogate option unset)")
        if num_steps is not None and num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        new_decay = decay is not None and self.decay is None
        self.num_steps = num_steps if num_steps is not None else self.num_steps
        self.decay = float(decay) if decay is not None else self.decay
        entries = self.num_steps if self.per_step and self.num_steps is not None else 1
        if hasattr(self, "rho") and self.rho.numel() == entries and not (self.init == "mpd" and new_decay):
            return  # nothing that changes rho: keep it (it may be trained)
        k = torch.full((entries,), self.k0)
        if self.init == "mpd" and entries > 1:
            if self.decay is None:
                raise ValueError("init='mpd' needs the neuron's decay beta: use the surrogate in circulate_firing "
                                 "(which passes it) or give decay=beta")
            k[1:] = self.k0 / math.sqrt(1 + self.decay ** 2)
        rho = torch.tensor([_softplus_inverse(v - self.k_min) for v in k.tolist()])
        if self.learned:
            self.rho = nn.Parameter(rho)
            self.rho.no_weight_decay = True
            self.rho.lr_mult = self.lr_mult
        else:
            self.register_buffer("rho", rho)

    @property
    def k(self) -> Tensor:
        """The current sharpness values (one per timestep, or one), detached."""
        return (self.k_min + F.softplus(self.rho)).detach()

    def sharpness(self, step: int | None) -> Tensor:
        """k for timestep ``step`` (0-based; None: the first step's k), differentiable w.r.t. rho."""
        return self._sharpness_of(self.rho[self._rho_index(step)])

    def sharpness_per_step(self, num_steps: int) -> Tensor:
        """k[t] for t < num_steps as one [T] tensor (the fused neuron paths take it as an input),
        differentiable w.r.t. rho; the same values and checks as ``sharpness(t)`` for each t."""
        last = self._rho_index(num_steps - 1)
        return self._sharpness_of(self.rho[:last + 1] if self.per_step else self.rho[:1].expand(num_steps))

    def _rho_index(self, step: int | None) -> int:
        """The row of rho that holds step's k, after checking that it can be used."""
        if self.granularity == "shared_t" and self.learned and not self.tied:
            raise RuntimeError("learnable surrogate with granularity='shared_t' is not tied across layers: call "
                               "repro.surrogates.learnable.share_timestep_sharpness(model) after building the model "
                               "(before the optimiser), or use granularity='per_layer_t'")
        if not self.per_step or step is None:
            return 0
        if self.num_steps is None and step > 0:
            raise ValueError("learnable surrogate with a per-timestep k does not know T: pass num_steps=T "
                             "(--surrogate.num_steps T) or use it in circulate_firing, which sets it")
        if self.num_steps is not None and step >= self.num_steps:
            raise ValueError(f"timestep {step} is beyond num_steps={self.num_steps} of the learnable surrogate")
        return step

    def _sharpness_of(self, rho: Tensor) -> Tensor:
        if self.frozen:
            rho = rho.detach() + 0.0 * rho  # zero gradient, but rho stays in the graph (DDP-safe)
        return self.k_min + F.softplus(rho.float())

    def call_params(self, x: Tensor, step: int | None = None, **context: Any) -> dict:
        return {"k": self.sharpness(step).detach()}

    @staticmethod
    def primitive(x: Tensor, k: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def straight_through(cls, x: Tensor, k: Tensor, fire_ge: bool) -> Tensor:
        """Spikes H(x) (x >= 0 with ``fire_ge``, else x > 0) plus psi_k(x) - stopgrad(psi_k(x)): the value of
        the Heaviside, the derivatives of psi_k w.r.t. x and k (``forward`` with ``learn=st_smooth``; the
        fused paths rebuild their double-backward graphs with it)."""
        psi = cls.primitive(x, k)
        return ((x >= 0) if fire_ge else (x > 0)).to(psi.dtype) + (psi - psi.detach())

    @staticmethod
    def proxy_derivatives(x: Tensor, k) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """(d psi_k / dx, d psi_k / dk) at x in closed form: the derivatives autograd takes of ``primitive``
        (tested equal), written in the vocabulary of ``closed_form.py`` so that the GPU kernels evaluate the
        same function (``models/triton_surrogates.py``)."""
        raise NotImplementedError

    @classmethod
    def proxy_vjp(cls, x: Tensor, k: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        """The backward of the straight-through term psi_k(x) - stopgrad(psi_k(x)) of ``forward`` for the
        upstream gradient ``grad`` (shaped as x): (grad * psi_k'(x), sum(grad * d psi_k(x) / dk)) from
        ``proxy_derivatives``.  A pure function of its arguments (no module state): the fused neuron paths
        (models/fused.py, models/fused_cf.py) call it in their backward with the k captured at forward time.
        Not differentiable itself."""
        slope_x, slope_k = cls.proxy_derivatives(x.detach(), k.detach())
        return grad * slope_x, (grad * slope_k).sum().reshape(k.shape)

    def forward(self, x: Tensor, fire_ge: bool = False, step: int | None = None, **context: Any) -> Tensor:
        if not self.learned:
            return super().forward(x, fire_ge, step=step, **context)
        k = self.sharpness(step)
        self.observe(x, {"k": k.detach()}, {**context, "step": step})  # diagnostics see the k actually used
        xf = x.float()
        if not (self.learn == "asgl_mix" and self.training):
            return self.straight_through(xf, k, fire_ge).to(x.dtype)
        psi = self.primitive(xf, k)
        keep_exact = torch.rand_like(xf) >= self.asgl_p
        value = torch.where(keep_exact, ((xf >= 0) if fire_ge else (xf > 0)).float(), psi.detach())
        return (value + (psi - psi.detach())).to(x.dtype)

    def on_model_built(self, model: nn.Module) -> None:
        """Engine hook (before the optimiser is built): tie ``shared_t`` surrogates across layers."""
        if self.granularity == "shared_t" and not self.tied:
            share_timestep_sharpness(model)

    def on_epoch_start(self, epoch: int) -> None:
        self.frozen = epoch < self.freeze_epochs

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """Clamp k to (k_min, k_max] through rho."""
        if self.learned:
            self.rho.clamp_(max=_softplus_inverse(self.k_max - self.k_min))

    def extra_repr(self) -> str:
        return (f"granularity={self.granularity}, learn={self.learn}, init={self.init}, num_steps={self.num_steps}, "
                f"k={[round(v, 3) for v in self.k.tolist()]}, k_range=({self.k_min}, {self.k_max}]")


class SigmoidTLSG(TimestepLearnableSurrogate):
    """psi_k = sigmoid(k x), psi_k' = k s (1 - s) (spikingjelly's sigmoid with alpha = k)."""

    @staticmethod
    def primitive(x: Tensor, k: Tensor) -> Tensor:
        return torch.sigmoid(k * x)

    @staticmethod
    def proxy_derivatives(x: Tensor, k) -> tuple[Tensor, Tensor]:
        """(k s (1 - s), x s (1 - s)), s = sigmoid(k x)."""
        s = logistic(k * x)
        slope = s * (1 - s)
        return k * slope, x * slope

    @staticmethod
    def shape(x: Tensor, k) -> Tensor:
        return Sigmoid.shape(x, alpha=k)


class RectTLSG(TimestepLearnableSurrogate):
    """psi_k = clamp(x/a + 1/2, 0, 1) with width a = 4/k; psi_k' = (1/a) 1[|x| < a/2]."""

    @staticmethod
    def primitive(x: Tensor, k: Tensor) -> Tensor:
        """clamp(x k/4 + 1/2, 0, 1) with no gradient at the bounds whatever the torch version (torch 2.11's ``clamp``
        passes it there, 2.14's does not; measured)."""
        v = x * (k / 4) + 0.5
        return torch.where((v > 0.0) & (v < 1.0), v, v.detach().clamp(0.0, 1.0))

    @staticmethod
    def proxy_derivatives(x: Tensor, k) -> tuple[Tensor, Tensor]:
        """(k/4, x/4) where 0 < x k/4 + 1/2 < 1, else 0: the open window, as autograd differentiates ``primitive``
        (tested against it)."""
        v = x * (k * 0.25) + 0.5
        inside = indicator(v > 0.0) * indicator(v < 1.0)
        return inside * (k * 0.25), inside * (x * 0.25)

    @staticmethod
    def shape(x: Tensor, k) -> Tensor:
        return Rectangular.shape(x, width=4 / k)


class AtanTLSG(TimestepLearnableSurrogate):
    """psi_k = arctan(pi a x / 2)/pi + 1/2 with a = k/2; psi_k' = (a/2) / (1 + (pi a x / 2)^2)."""

    @staticmethod
    def primitive(x: Tensor, k: Tensor) -> Tensor:
        return torch.atan(math.pi / 4 * k * x) / math.pi + 0.5

    @staticmethod
    def proxy_derivatives(x: Tensor, k) -> tuple[Tensor, Tensor]:
        """((k/4) / (1 + z^2), (x/4) / (1 + z^2)), z = pi k x / 4."""
        z = QUARTER_PI * k * x
        d = 1 + z * z
        return div(k * 0.25, d), div(x * 0.25, d)

    @staticmethod
    def shape(x: Tensor, k) -> Tensor:
        return ATan.shape(x, alpha=k / 2)


SHAPES = {"sigmoid": SigmoidTLSG, "rect": RectTLSG, "atan": AtanTLSG}


def learns_sharpness(surrogate) -> bool:
    """A TLSG whose k is learned (the fused neuron paths take k[t] as an input and return its gradient)."""
    return isinstance(surrogate, TimestepLearnableSurrogate) and surrogate.learned


def learnable(shape: str = "sigmoid", granularity: str = "per_layer_t", learn: str = "st_smooth", k0: float = 4.0,
              k_min: float = 0.5, k_max: float = 20.0, init: str = "const", lr_mult: float = 1.0,
              freeze_epochs: int = 0, asgl_p: float = 0.5, num_steps: int | None = None,
              decay: float | None = None) -> TimestepLearnableSurrogate:
    """TLSG surrogate (module docstring), with our defaults [reconstructed]."""
    if shape not in SHAPES:
        raise ValueError(f"learnable surrogate: shape must be one of {tuple(SHAPES)}, got {shape!r}")
    return SHAPES[shape](granularity, learn, k0, k_min, k_max, init, lr_mult, freeze_epochs, asgl_p, num_steps, decay)


def share_timestep_sharpness(model: nn.Module) -> int:
    """Tie the rho of every ``granularity='shared_t'`` learnable surrogate in ``model`` to the first one's
    (one k per timestep for all layers).  Call after building the model and before building the optimiser;
    returns the number of surrogates tied."""
    shared = [m for m in model.modules() if isinstance(m, TimestepLearnableSurrogate) and m.granularity == "shared_t"]
    if not shared:
        return 0
    first = shared[0]
    for module in shared:
        if (type(module), module.num_steps, module.k_min, module.learn) != (type(first), first.num_steps,
                                                                              first.k_min, first.learn):
            raise ValueError("shared_t surrogates must agree on shape, num_steps, k_min and learn to be tied")
        if first.learned:
            module.rho = first.rho
        module.tied = True
    return len(shared)


def sharpness_table(model: nn.Module) -> dict[str, list[float]]:
    """{module name: [k per timestep]} of every learnable surrogate, for logging k[l, t] per epoch."""
    return {name: m.k.tolist() for name, m in model.named_modules() if isinstance(m, TimestepLearnableSurrogate)}
