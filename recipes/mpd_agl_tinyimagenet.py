"""MPD-AGL on Tiny-ImageNet: VGG-13, T=4 [reconstructed: no code or number was released; results are a
deviation; docs/methods.md section "Backbones"].  Put the standard tiny-imagenet-200 folder under --data_root.
"""
import dataclasses

from mpd_agl_cifar10 import VANILLA, config as cifar10

from repro.cli import main

config = dataclasses.replace(
    cifar10, model="vgg13", model_options={"bn_scale": 0.5}, num_steps=4,
    dataset="tiny_imagenet", dataset_options={}, output_dir="runs/mpd_agl_tinyimagenet",
)
SMOKE = {"model_options": {"bn_scale": 0.5, "width": 0.125, "input_size": 32}}

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
