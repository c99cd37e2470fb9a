"""DS-ATGO on CIFAR10-DVS: VGGSNN 48x48, T=10 (ds_atgo.md section 6; published 83.70 +- 0.41).

Recipe [reconstructed from the MPD-AGL DVS pipeline]: SGD 0.1, wd 5e-4, 200 epochs, batch 100,
plain CE (no TET), flip + roll augmentation.  ``--vanilla`` runs the baseline.
"""
import dataclasses

from ds_atgo_cifar10 import VANILLA, config as cifar10

from repro.cli import main

config = dataclasses.replace(
    cifar10, model="vggsnn", num_steps=10,                       # [published] T=10
    loss="ce", loss_options={},                                  # [reconstructed] CE, no TET
    dataset="cifar10_dvs", dataset_options={"size": 48},         # 10 equal-count frames, 48x48, 9:1 per class
    weight_decay=5e-4, epochs=200, output_dir="runs/ds_atgo_cifar10dvs",  # [reconstructed]
)
SMOKE = {"model_options": {"width": 0.125}, "num_steps": 4}

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
