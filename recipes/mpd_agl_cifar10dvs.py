"""MPD-AGL on CIFAR10-DVS: VGGSNN 48x48, T=10 (published 82.50, via DS-ATGO's Table 1).

[reference code]: the CIFAR-10 settings with weight decay 5e-4, 150 epochs, batch 100, CE,
flip + roll augmentation.
"""
import dataclasses

from mpd_agl_cifar10 import VANILLA, config as cifar10

from repro.cli import main

config = dataclasses.replace(
    cifar10, model="vggsnn", model_options={"bn_scale": 0.5}, num_steps=10,
    dataset="cifar10_dvs", dataset_options={"size": 48}, weight_decay=5e-4, output_dir="runs/mpd_agl_cifar10dvs",
)
SMOKE = {"model_options": {"bn_scale": 0.5, "width": 0.125}, "num_steps": 4}

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
