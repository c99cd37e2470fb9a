"""A2SG on CIFAR-100 with the CIFAR ResNet-18 (3x3 stem, no max-pool), T=2 [reconstructed]: the flagship
CIFAR-100 recipe (recipes/a2sg_cifar100.py, whatever its defaults) with the backbone and T of the ASGL
baseline, to compare against ASGL's reference points (ResNet-18, CIFAR-100, T=2: 76.76% for ASGL, 75.76%
for a fixed width-0.5 SG [reference code: ASGL release README]; these are not A2SG numbers).
``--vanilla``: the flagship recipe's baseline."""
import dataclasses

from a2sg_cifar100 import SMOKE, VANILLA, config as cifar100

from repro.cli import main

config = dataclasses.replace(cifar100, model="resnet18", model_options={"stem": "cifar"}, num_steps=2,
                             output_dir="runs/a2sg_resnet18_cifar100")
SMOKE = {**SMOKE, "model_options": {**SMOKE.get("model_options", {}), "stem": "cifar"}}

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
