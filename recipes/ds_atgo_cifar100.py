"""DS-ATGO on CIFAR-100: ResNet-19, T=2 (Jiang et al., AAAI 2026, Table 1; published 80.59 +- 0.17).

The CIFAR-10 recipe with CIFAR-100 data and normalisation [reconstructed: the released code covers
CIFAR-10 only].  ``--vanilla`` runs the baseline.
"""
import dataclasses

from ds_atgo_cifar10 import SMOKE, VANILLA, config as cifar10

from repro.cli import main

config = dataclasses.replace(cifar10, dataset="cifar100", output_dir="runs/ds_atgo_cifar100")

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
