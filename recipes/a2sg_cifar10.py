"""A2SG on CIFAR-10: the CIFAR-100 recipe on CIFAR-10 data; the paper's ResNet-19 / T=4 number is 96.74
(ST-ASG 96.41) [paper, via summary].  ``--vanilla``: the fixed triangle (TRI); arms as in a2sg_cifar100.py."""
import dataclasses

from a2sg_cifar100 import SMOKE, VANILLA, config as cifar100

from repro.cli import main

config = dataclasses.replace(cifar100, dataset="cifar10", output_dir="runs/a2sg_cifar10")

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
