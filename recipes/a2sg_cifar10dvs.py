"""A2SG on CIFAR10-DVS: VGGSNN 48x48, T=10, SGD 0.1, wd 5e-4, cosine 200 epochs, batch 100, flip + roll
[reconstructed; docs/methods.md, "A2SG"].  ``--vanilla``: the fixed triangle (TRI)."""
import dataclasses

from a2sg_cifar100 import VANILLA, config as cifar100

from repro.cli import main

config = dataclasses.replace(
    cifar100, model="vggsnn", num_steps=10, dataset="cifar10_dvs", dataset_options={"size": 48},
    batch_size=100, epochs=200, output_dir="runs/a2sg_cifar10dvs",
)
SMOKE = {"model_options": {"width": 0.125}, "num_steps": 4}

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
