"""A2SG on Spikformer-4-384, CIFAR-100, T=4 (docs/methods.md, "A2SG"; the Spikformer recipe as in
"Circulate-firing recipes").

Deviation: the reference recipe's mixup, random erasing and timm RandAugment are not in our data
pipeline; torchvision's RandAugment stands in.  The neuron is Spikformer's own (spikingjelly-style LIF,
tau 2, decay_input, detached hard reset); only the surrogate changes.  ``--vanilla``: sigmoid(alpha=4).
"""
from repro.cli import main
from repro.config import Config

config = Config(
    model="spikformer", model_options={"preset": "cifar"}, num_steps=4,   # [reference code] 4-384, T=4
    neuron="lif",                                       # the model fills in spikingjelly's LIF options
    surrogate="a2sg", surrogate_options={"shape": "ramp", "adapt": "search", "w0": 0.5},  # [paper, via summary]
    loss="ls_ce", loss_options={"label_smoothing": 0.1},                  # [reference code]
    dataset="cifar100", dataset_options={"auto_augment": "randaugment"},
    batch_size=128, epochs=300,                                           # [reference code]
    optimizer="adamw", lr=5e-4, weight_decay=6e-2,                        # [reference code]
    schedule="cosine", warmup_epochs=20, warmup_lr=1e-5, min_lr=1e-5,     # [reference code] (no cooldown)
    seed=2025, output_dir="runs/a2sg_spikformer_cifar100",
)
VANILLA = {"surrogate": "sigmoid", "surrogate_options": {"alpha": 4.0}}  # Spikformer's own surrogate
SMOKE = {"model_options": {"preset": "cifar", "dim": 32, "depth": 1, "heads": 2}}

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
