"""DS-ATGO's adaptive-threshold (AT) neuron (Jiang et al., AAAI 2026, Eqs. 5-6; docs/methods.md section "DS-ATGO").

A hard-reset LIF (preset ``reference``: fires on ``>=``, reset not detached, learnable decay
sigmoid(w) with init 0.2) whose threshold at step t is computed from the charged, pre-reset
membrane U[t] of the whole layer:

    U[t]     = tau * U[t-1] * (1 - S[t-1]) + I[t]
    theta_t  = f_c * (mu_t + sigma_t)                    at_variant="true"      [published, Eq. 5]
    theta_t  = f_c * sqrt(1 + tau^2) * V0                at_variant="estimated" [published, Eq. 5]
    S[t]     = H(U[t] - theta_t),  surrogate on x = U[t] - theta_t

- mu_t, sigma_t: mean and unbiased (N-1) std of U[t].detach() in fp32 over all elements of the
  layer (``stat_scope="layer"``, one scalar per layer and step) [reference code], or per channel
  over batch and space (``stat_scope="channel"``) [reconstructed]; tau detached.  Theorem 1
  [published]: for Gaussian U, P(U >= mu + sigma) = 1 - Phi(1) = 15.87%.
- theta_t receives no gradient.  Optional floor ``thr_min`` (None = no clip, as the code).
- Running threshold [published Eq. 6; reference code]: every training forward does
  ``running_thr[t] <- (1 - momentum) running_thr[t] + momentum theta_t`` (init V0, momentum 0.1; all
  steps at once after the last);
  eval fires against ``running_thr[t]`` (``eval_threshold="running"``) or the eval batch's own
  statistics (``"batch"``).  ``running_thr`` is a registered persistent buffer of shape [T]
  ([T, C] for ``stat_scope="channel"``, sized at the first forward) [reconstructed: the code keeps
  it as a plain attribute, lost from checkpoints].  Input with another T than the model was built
  for is an error.  ``freeze_running()`` stops the update (diagnostics in train mode).
- ``sync_stats`` [reconstructed]: when torch.distributed is initialised, each process's mean,
  variance and count are combined across processes (``layers.global_mean_var``; training forwards,
  and eval with ``eval_threshold="batch"``), so the statistics are those of the global batch.
- ``at=False``: theta_t = V0 (the vanilla and "w/ TGO" arms).

``fire_context`` (used by ``LIF.fire`` and by the fused path of ``models/fused.py``) gives theta_t and
the surrogate's context, so the surrogate sees ``surrogate(U - theta_t, fire_ge=..., mem=U, step=t,
neuron=self, threshold=theta_t, mean=mu_t, std=sigma_t)`` and TGO (``surrogates/tgo.py``) can set its
width from the same statistics.  ``thresholds`` holds the detached theta_t of the last forward (one
entry per step) for logging, e.g. the minimum threshold.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from ..surrogates import Surrogate
from .layers import global_mean_var
from .neurons import LIF

AT_VARIANTS = ("true", "estimated")
STAT_SCOPES = ("layer", "channel")
EVAL_THRESHOLDS = ("running", "batch")


class AdaptiveThresholdLIF(LIF):
    """LIF with DS-ATGO's per-layer, per-step adaptive threshold (see module docstring).

    Args:
        decay: initial tau (0.2); ``decay_learnable=False`` keeps it fixed (the "fixed0.2" option).
        threshold: V0, the base threshold: theta with ``at=False`` and the initial running threshold.
        surrogate: a ``Surrogate`` (DS-ATGO: ``tgo``) or a surrogate name with ``surrogate_kwargs``.
        at, at_variant, f_c, momentum, stat_scope, eval_threshold, sync_stats, thr_min: see module docstring.
        preset, fire_ge, reset_detach, decay_param, fused, saved_precision: as ``LIF`` (default preset
            ``reference``).
        num_steps: T, required (one running threshold per step).
    """

    def __init__(self, num_steps: int | None = None, surrogate: Surrogate | Callable | str = "tgo",
                 surrogate_kwargs: dict | None = None, decay: float = 0.2, threshold: float = 1.0,
                 decay_learnable: bool = True, at: bool = True, at_variant: str = "true", f_c: float = 1.0,
                 momentum: float = 0.1, stat_scope: str = "layer", eval_threshold: str = "running",
                 sync_stats: bool = False, thr_min: float | None = None, preset: str = "reference",
                 fire_ge: bool | None = None, reset_detach: bool | None = None, decay_param: str | None = None,
                 fused: bool = True, saved_precision: str = "fp32"):
        if num_steps is None or num_steps < 1:
            raise ValueError(f"adaptive_threshold needs num_steps = T >= 1 (one running threshold per step), "
                             f"got {num_steps}")
        for name, value, choices in (("at_variant", at_variant, AT_VARIANTS), ("stat_scope", stat_scope, STAT_SCOPES),
                                     ("eval_threshold", eval_threshold, EVAL_THRESHOLDS)):
            if value not in choices:
                raise ValueError(f"adaptive_threshold {name} must be one of {choices}, got {value!r}")
        if not f_c > 0:
            raise ValueError(f"f_c must be > 0, got {f_c}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        super().__init__(decay=decay, threshold=threshold, surrogate=surrogate, surrogate_kwargs=surrogate_kwargs,
                         preset=preset, fire_ge=fire_ge, reset_detach=reset_detach, decay_param=decay_param,
                         decay_learnable=decay_learnable, reset="zero", num_steps=num_steps, fused=fused,
                         saved_precision=saved_precision)
        self.at, self.at_variant, self.f_c, self.momentum = bool(at), at_variant, float(f_c), float(momentum)
        self.stat_scope, self.eval_threshold, self.sync_stats = stat_scope, eval_threshold, bool(sync_stats)
        self.thr_min = None if thr_min is None else float(thr_min)
        self.register_buffer("running_thr", torch.full((num_steps,), self.threshold))
        self.running_frozen = False
        self.thresholds: list[Tensor] = []

    def fire_context(self, u: Tensor, step: int | None) -> tuple[Tensor, dict]:
        """theta_t (detached) and the surrogate context of step t (``LIF.fire`` and the fused path call this)."""
        mean, std = self.membrane_statistics(u)
        threshold = self.step_threshold(step, mean, std)
        if step == 0:
            self.thresholds = []
        self.thresholds.append(threshold)
        if step == len(self.running_thr) - 1 and self.updates_running():  # every step's running threshold at once
            self.running_thr.lerp_(torch.stack(self.thresholds).reshape(self.running_thr.shape), self.momentum)
        return threshold, dict(mem=u, step=step, neuron=self, threshold=threshold, mean=mean, std=std)

    @torch.no_grad()
    def membrane_statistics(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, sigma) of u.detach() in fp32: scalars (layer) or shaped [1, C, 1, ...] (channel)."""
        v = u.detach().float()
        if self.stat_scope == "layer":
            dims, shape = tuple(range(v.dim())), ()
        else:
            dims, shape = (0, *range(2, v.dim())), (1, -1) + (1,) * (v.dim() - 2)
        if not (self.sync_stats and (self.training or self.eval_threshold == "batch")):
            std, mean = torch.std_mean(v, dim=dims, correction=1)
            return mean.reshape(shape), std.reshape(shape)
        # float64 moments, also in one process: 1 and N processes then agree to fp32 rounding
        mean, var, count = global_mean_var(v, dims)
        std = (var * count / (count - 1)).sqrt()
        return mean.float().reshape(shape), std.float().reshape(shape)

    def updates_running(self) -> bool:
        """Whether this forward moves ``running_thr`` (training, adaptive threshold, not frozen)."""
        return self.at and self.training and not self.running_frozen

    @torch.no_grad()
    def step_threshold(self, step: int, mean: Tensor, std: Tensor) -> Tensor:
        """theta_t for this forward (detached)."""
        if not self.at:
            return torch.full_like(mean, self.threshold)
        if self.stat_scope == "channel":
            self._size_running_thr(mean.numel())
        if not self.training and self.eval_threshold == "running":
            return self.running_thr[step].clone().view(mean.shape)
        if self.at_variant == "true":
            threshold = mean + std if self.f_c == 1 else self.f_c * (mean + std)  # (x 1 is exact: a launch fewer)
        else:
            tau = self.decay.detach().float().to(mean.device)
            threshold = self.f_c * self.threshold * torch.sqrt(1 + tau ** 2) * torch.ones_like(mean)
        if self.thr_min is not None:
            threshold = threshold.clamp_min(self.thr_min)
        return threshold

    def _size_running_thr(self, channels: int) -> None:
        """Channel scope: expand the initial [T] buffer to [T, C] at the first forward."""
        if self.running_thr.dim() == 1:
            self.running_thr = self.running_thr[:, None].repeat(1, channels)
        elif self.running_thr.shape[1] != channels:
            raise ValueError(f"running_thr holds {self.running_thr.shape[1]} channels but the input has {channels}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "running_thr")
        if saved is not None and saved.dim() == 2 and self.running_thr.dim() == 1 and self.stat_scope == "channel":
            self._size_running_thr(saved.shape[1])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @contextmanager
    def freeze_running(self) -> Iterator["AdaptiveThresholdLIF"]:
        """Within the block, training forwards leave ``running_thr`` unchanged (like BN momentum 0)."""
        previous, self.running_frozen = self.running_frozen, True
        try:
            yield self
        finally:
            self.running_frozen = previous

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, at={self.at}, at_variant={self.at_variant}, f_c={self.f_c}, "
                f"momentum={self.momentum}, stat_scope={self.stat_scope}, eval_threshold={self.eval_threshold}, "
                f"sync_stats={self.sync_stats}, thr_min={self.thr_min}")


@contextmanager
def freeze_running_thresholds(model: nn.Module) -> Iterator[nn.Module]:
    """``freeze_running()`` on every adaptive-threshold neuron of ``model`` at once."""
    with ExitStack() as stack:
        for module in model.modules():
            if isinstance(module, AdaptiveThresholdLIF):
                stack.enter_context(module.freeze_running())
        yield model
