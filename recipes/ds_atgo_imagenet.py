"""DS-ATGO on ImageNet: spiking ResNet-18, T=4 (Jiang et al., AAAI 2026, Table 1; published 68.86 +- 0.25).

Recipe [reconstructed]: SGD 0.1, wd 1e-4, cosine, 100 epochs, batch 256 (global; per process here),
LS-CE 0.1, RandomResizedCrop 224 + flip.  ImageNet is never downloaded: put the ImageFolder layout
(train/, val/) under --data_root.  ``--vanilla`` runs the baseline.
"""
import dataclasses

from ds_atgo_cifar10 import VANILLA, config as cifar10

from repro.cli import main

config = dataclasses.replace(
    cifar10, model="resnet18", model_options={"stem": "imagenet"}, num_steps=4,   # [published] T=4
    dataset="imagenet", dataset_options={}, batch_size=256, eval_batch_size=256,
    epochs=100, output_dir="runs/ds_atgo_imagenet",
)
SMOKE = {"model_options": {"stem": "imagenet", "width": 0.125}}

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
