"""Classification losses on per-step logits ``[T, B, K]`` (docs/methods.md section "Losses").

Every loss is computed in fp32; prediction is always the mean of the logits over T.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import spiking_layers
from .registry import Registry

LOSSES = Registry("loss")


class MeanLogitCE(nn.Module):
    """l = CE(mean_t O_t, y) [reference code: MPD-AGL, DS-ATGO]; with ``label_smoothing`` = eps the
    target is (1 - eps) onehot + eps / K [reference code: DS-ATGO, eps = 0.1]."""

    task = "classification"

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits.float().mean(0), target, label_smoothing=self.label_smoothing)


class TETLoss(nn.Module):
    """TET [published: Deng et al. ICLR 2022]:
    L = (1/T) sum_t [(1 - lam) CE(O_t, y) + lam MSE(O_t, phi)], the MSE over all logits of the batch;
    defaults lam = 1e-3, phi = 1.0 [reference code: TET's test script; its training script uses 1e-4].
    Results trained with it must be labelled TET."""

    task = "classification"

    def __init__(self, lam: float = 1e-3, phi: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"TET lam must be in [0, 1], got {lam}")
        self.lam, self.phi, self.label_smoothing = lam, phi, label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        steps = logits.shape[0]
        ce = F.cross_entropy(logits.flatten(0, 1), target.repeat(steps), label_smoothing=self.label_smoothing)
        mse = ((logits - self.phi) ** 2).mean()
        return (1 - self.lam) * ce + self.lam * mse


@LOSSES.register("ce")
def ce(label_smoothing: float = 0.0) -> MeanLogitCE:
    return MeanLogitCE(label_smoothing)


@LOSSES.register("ls_ce")
def ls_ce(label_smoothing: float = 0.1) -> MeanLogitCE:
    return MeanLogitCE(label_smoothing)


@LOSSES.register("tet")
def tet(lam: float = 1e-3, phi: float = 1.0, label_smoothing: float = 0.0) -> TETLoss:
    return TETLoss(lam, phi, label_smoothing)


class DiceCELoss(nn.Module):
    """Segmentation: L = dice_weight * Dice + ce_weight * CE on logits [B, K, H, W] (already averaged over T),
    pixels equal to ``ignore_index`` left out of both; Dice from segmentation-models-pytorch (multiclass,
    soft Dice on softmax probabilities)."""

    task = "segmentation"

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, ignore_index: int = 255):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss

        self.dice = DiceLoss(mode="multiclass", ignore_index=ignore_index)
        self.dice_weight, self.ce_weight, self.ignore_index = dice_weight, ce_weight, ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        return self.dice_weight * self.dice(logits, target) + self.ce_weight * ce


@LOSSES.register("dice_ce")
def dice_ce(dice_weight: float = 1.0, ce_weight: float = 1.0, ignore_index: int = 255) -> DiceCELoss:
    return DiceCELoss(dice_weight, ce_weight, ignore_index)


def create_loss(name: str, **kwargs) -> nn.Module:
    return LOSSES.create(name, **kwargs)


# Balanced positive/negative membrane-potential loss [reconstructed] (docs/methods.md section
# "Circulate-firing neurons, learnable surrogate, balanced loss").

PNB_FORMS = ("normalized", "raw", "count")
PNB_TARGETS = ("hidden", "output")
PNB_POTENTIALS = ("pre_fire", "post_reset")


def potential_balance(potential: Tensor) -> tuple[Tensor, Tensor]:
    """(P, N) = (mean ReLU(H), mean ReLU(-H)) over all elements, in fp32 and differentiable; computed as
    ((mean|H| + mean H)/2, (mean|H| - mean H)/2), which needs no extra saved activation."""
    h = potential.float()
    mean, magnitude = h.mean(), h.abs().mean()
    return (magnitude + mean) / 2, (magnitude - mean) / 2


class BalancedPotentialLoss(nn.Module):
    """PNB: L = L_cls + lambda(epoch) L_PNB [reconstructed; published: an extra loss brings "equilibrium
    between positive and negative membrane potentials"].

    ``target="hidden"`` (default): over every spiking layer l and step t, with P, N of ``potential_balance``
    on the recorded potential H_{l,t} (not detached, so it trains weights and BN)::

        normalized  L_PNB = 1/(L T) sum_{l,t} ((P - N) / (P + N + eps))^2      (scale-free; default)
        raw         L_PNB = 1/(L T) sum_{l,t} (P - N)^2
        count       L_PNB = 1/(L T) sum_{l,t} (mean sigmoid(count_sharpness H) - 1/2)^2

    ``on``: ``pre_fire`` (H, default; any ``SpikingNeuron`` records it) or ``post_reset`` (U, neurons that
    list it in ``RECORDABLE_POTENTIALS``, e.g. circulate_firing).  ``bind(model)`` (called by the engine)
    switches on ``record_potentials`` of every spiking layer.

    ``target="output"`` balances the readout logits O instead: target class positive, non-targets
    negative, separately weighted: L_PNB = pos_w mean_{t,b} ReLU(-O_{t,b,y}) +
    neg_w mean_{t,b,k != y} ReLU(O_{t,b,k}) (``form`` and ``on`` apply to ``hidden`` only).

    lambda(epoch) = lam min(1, epoch / warmup_epochs) (linear warm-up from 0; set by ``on_epoch_start``).
    L_cls is any loss of ``LOSSES`` by name (``cls``: ce, ls_ce, tet) with ``cls_options``.
    """

    task = "classification"

    def __init__(self, cls: str = "ce", cls_options: dict | None = None, lam: float = 0.05, warmup_epochs: int = 5,
                 form: str = "normalized", target: str = "hidden", on: str = "pre_fire", eps: float = 1e-6,
                 count_sharpness: float = 10.0, output_pos_weight: float = 1.0, output_neg_weight: float = 1.0):
        super().__init__()
        for name, value, choices in (("form", form, PNB_FORMS), ("target", target, PNB_TARGETS),
                                     ("on", on, PNB_POTENTIALS)):
            if value not in choices:
                raise ValueError(f"pnb: {name} must be one of {choices}, got {value!r}")
        if target == "output" and (form, on) != ("normalized", "pre_fire"):
            raise ValueError("pnb: form and on apply to target='hidden'; leave them at their defaults with "
                             "target='output'")
        if cls == "pnb":
            raise ValueError("pnb: cls is the classification loss (ce, ls_ce, tet), not 'pnb'")
        if lam < 0 or warmup_epochs < 0 or eps <= 0 or count_sharpness <= 0:
            raise ValueError(f"pnb needs lam >= 0, warmup_epochs >= 0, eps > 0 and count_sharpness > 0; got lam={lam}, "
                             f"warmup_epochs={warmup_epochs}, eps={eps}, count_sharpness={count_sharpness}")
        if output_pos_weight < 0 or output_neg_weight < 0:
            raise ValueError("pnb: output_pos_weight and output_neg_weight must be >= 0")
        self.classification = create_loss(cls, **(cls_options or {}))
        self.lam, self.warmup_epochs, self.form, self.target, self.on = float(lam), int(warmup_epochs), form, target, on
        self.eps, self.count_sharpness = float(eps), float(count_sharpness)
        self.output_pos_weight, self.output_neg_weight = float(output_pos_weight), float(output_neg_weight)
        self.epoch = 0
        self.layers: list[tuple[str, nn.Module]] | None = None  # plain list: the model's modules are not ours

    @property
    def weight(self) -> float:
        """lambda of the current epoch."""
        if self.warmup_epochs == 0:
            return self.lam
        return self.lam * min(1.0, self.epoch / self.warmup_epochs)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def bind(self, model: nn.Module) -> None:
        """Find the spiking layers and make them record the potential this loss balances."""
        layers = spiking_layers(model)
        if self.target == "hidden":
            if not layers:
                raise ValueError("pnb with target='hidden' needs a model with spiking layers (SpikingNeuron)")
            for name, layer in layers:
                if self.on not in getattr(layer, "RECORDABLE_POTENTIALS", ("pre_fire",)):
                    raise ValueError(f"pnb: layer {name!r} ({type(layer).__name__}) records only pre-fire potentials; "
                                     "use on='pre_fire'")
            for _, layer in layers:
                if self.on == "post_reset":
                    layer.recorded_potential = "post_reset"
                layer.record_potentials = True
        self.layers = layers

    def balance_term(self, potential: Tensor) -> Tensor:
        """The (l, t) summand of L_PNB for one recorded potential."""
        if self.form == "count":
            return (torch.sigmoid(self.count_sharpness * potential.float()).mean() - 0.5) ** 2
        positive, negative = potential_balance(potential)
        if self.form == "raw":
            return (positive - negative) ** 2
        return ((positive - negative) / (positive + negative + self.eps)) ** 2

    def recorded(self) -> list[tuple[str, list[Tensor]]]:
        if self.layers is None:
            raise RuntimeError("pnb: call bind(model) before the forward pass (the engine does)")
        recorded = [(name, layer.potentials) for name, layer in self.layers if getattr(layer, "potentials", None)]
        if not recorded:
            raise RuntimeError("pnb: the spiking layers recorded no potentials; run the model after bind(model)")
        return recorded

    def hidden_term(self) -> Tensor:
        return torch.stack([self.balance_term(h) for _, potentials in self.recorded() for h in potentials]).mean()

    def output_term(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        is_target = F.one_hot(target, logits.shape[-1]).bool().expand_as(logits)
        positive = F.relu(-logits[is_target]).mean()
        negative = F.relu(logits[~is_target]).mean()
        return self.output_pos_weight * positive + self.output_neg_weight * negative

    def balance_ratios(self) -> dict[str, list[float]]:
        """Diagnostics: P / (P + N) per layer and step of the last forward (also in eval)."""
        ratios = {}
        for name, potentials in self.recorded():
            terms = [potential_balance(h.detach()) for h in potentials]
            ratios[name] = [float(p / (p + n + self.eps)) for p, n in terms]
        return ratios

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        balance = self.output_term(logits, target) if self.target == "output" else self.hidden_term()
        return self.classification(logits, target) + self.weight * balance


@LOSSES.register("pnb")
def pnb(cls: str = "ce", cls_options: dict | None = None, lam: float = 0.05, warmup_epochs: int = 5,
        form: str = "normalized", target: str = "hidden", on: str = "pre_fire", eps: float = 1e-6,
        count_sharpness: float = 10.0, output_pos_weight: float = 1.0,
        output_neg_weight: float = 1.0) -> BalancedPotentialLoss:
    return BalancedPotentialLoss(cls, cls_options, lam, warmup_epochs, form, target, on, eps, count_sharpness,
                                 output_pos_weight, output_neg_weight)
