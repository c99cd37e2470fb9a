"""Circulate-firing in Spikformer-4-384 on CIFAR-10, T=4 (Zhou et al., arXiv 2605.27412, with the Spikformer
CIFAR recipe [reference code]; docs/methods.md section "Circulate-firing recipes") [reconstructed].

Every LIF (SPS, Q/K/V, attention output at theta = 0.5, MLP) becomes a CF neuron with its own TLSG
sharpness; the reset is detached inside Spikformer, as its baseline.  Deviation: mixup, random erasing and
timm RandAugment are not in our pipeline (torchvision RandAugment stands in).  ``--vanilla``: the plain
Spikformer (spikingjelly-style LIF, sigmoid(alpha=4) SG, LS-CE), the baseline with published numbers,
not the CNN recipes' ladder rung.
"""
from repro.cli import main
from repro.config import Config

config = Config(
    model="spikformer", model_options={"preset": "cifar", "attn_threshold_option": "theta"}, num_steps=4,
    neuron="circulate_firing", neuron_options={"mode": "signed", "D": 4, "theta": 1.0, "tau": 2.0, "reset_detach": True},
    surrogate="learnable", surrogate_options={"shape": "sigmoid", "granularity": "per_layer_t", "k0": 4.0},
    loss="pnb", loss_options={"cls": "ls_ce", "lam": 0.05, "warmup_epochs": 5},
    dataset="cifar10", dataset_options={"auto_augment": "randaugment"},
    batch_size=128, epochs=300,
    optimizer="adamw", lr=5e-4, weight_decay=6e-2,
    schedule="cosine", warmup_epochs=20, warmup_lr=1e-5, min_lr=1e-5,
    seed=2025, output_dir="runs/cf_spikformer_cifar10",
)
VANILLA = {"model_options": {"preset": "cifar"}, "neuron": "lif", "neuron_options": {},
           "surrogate": "sigmoid", "surrogate_options": {"alpha": 4.0}, "loss": "ls_ce", "loss_options": {}}
SMOKE = {"model_options": {"dim": 32, "depth": 1, "heads": 2}}  # on top of the run's model options

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
