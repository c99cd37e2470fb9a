"""Circulate-firing neurons + time-step-wise learnable surrogate + balanced loss on CIFAR-10: ResNet-19, T=4
(Zhou et al., arXiv 2605.27412; recipe of docs/methods.md section "Circulate-firing recipes").

The paper gives no code and no CIFAR numbers: every choice is [reconstructed]; compare against the
baseline on the identical recipe:

    accelerate launch recipes/cf_cifar10.py --download              # CF (signed, D=4) + TLSG + PNB
    accelerate launch recipes/cf_cifar10.py --download --vanilla    # ladder rung 1: soft-reset LIF, sigmoid SG, CE
    accelerate launch recipes/cf_cifar10.py --vanilla --neuron.preset snntorch   # the same with snnTorch's conventions
    accelerate launch recipes/cf_cifar10.py --neuron.mode wrap_signed --loss.lam 0.1   # ladder rungs
"""
from repro.cli import main
from repro.config import Config

config = Config(
    model="resnet19", num_steps=4,                                           # T in {2, 4, 6}
    neuron="circulate_firing", neuron_options={"mode": "signed", "D": 4, "theta": 1.0, "tau": 2.0},
    surrogate="learnable", surrogate_options={"shape": "sigmoid", "granularity": "per_layer_t", "k0": 4.0},
    loss="pnb", loss_options={"cls": "ce", "lam": 0.05, "warmup_epochs": 5, "form": "normalized"},
    dataset="cifar10", dataset_options={"auto_augment": "cifar10", "cutout": True, "cutout_length": 16},
    batch_size=128, epochs=300,
    optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",  # no weight decay on the sharpness
    seed=2025, output_dir="runs/cf_cifar10",
)
# The first rung of the ablation ladder: a soft-reset LIF with a fixed SG and plain CE.  With the reference
# conventions (>=, reset attached, reset decayed with the membrane) it equals CF with D = 1, mode unsigned,
# spike for spike (tested); --neuron.preset snntorch gives snnTorch's conventions instead.
VANILLA = {"neuron": "lif",
           "neuron_options": {"preset": "reference", "decay": 0.5, "threshold": 1.0, "reset": "subtract"},
           "surrogate": "sigmoid", "surrogate_options": {"alpha": 4.0}, "loss": "ce", "loss_options": {}}
SMOKE = {"model_options": {"width": 0.125}}

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
