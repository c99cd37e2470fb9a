"""Circulate-firing on CIFAR-100: the CIFAR-10 recipe on CIFAR-100 data [reconstructed].  ``--vanilla``: the
ablation ladder's first rung (docs/methods.md section "Circulate-firing ablation ladder")."""
import dataclasses

from cf_cifar10 import SMOKE, VANILLA, config as cifar10

from repro.cli import main

config = dataclasses.replace(cifar10, dataset="cifar100", output_dir="runs/cf_cifar100")

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
