"""MPD-AGL on CIFAR-100: ResNet-19, T=2 (published 78.84, and 79.72 at T=4, via DS-ATGO's Table 1).

The CIFAR-10 recipe with CIFAR-100 data [reconstructed: no CIFAR-100 code was released].
"""
import dataclasses

from mpd_agl_cifar10 import SMOKE, VANILLA, config as cifar10

from repro.cli import main

config = dataclasses.replace(cifar10, dataset="cifar100", output_dir="runs/mpd_agl_cifar100")

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
