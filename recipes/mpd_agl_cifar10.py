"""MPD-AGL on CIFAR-10: ResNet-19, T=2 (docs/methods.md section "MPD-AGL"; published 96.18, and 96.35 at
T=4, as reported in DS-ATGO's Table 1).

    accelerate launch recipes/mpd_agl_cifar10.py --download
    accelerate launch recipes/mpd_agl_cifar10.py --num_steps 4
    accelerate launch recipes/mpd_agl_cifar10.py --vanilla                 # fixed width-1 rectangle
    accelerate launch recipes/mpd_agl_cifar10.py --surrogate.width lsg     # the other ablation arms
"""
from repro.cli import main
from repro.config import Config

config = Config(
    model="resnet19", model_options={"bn_scale": 0.5}, num_steps=2,   # [reference code] tdBN alpha*V_th = 0.5
    neuron="plif", neuron_options={"decay": 0.2, "threshold": 0.5},   # [reference code] >=, attached hard reset
    surrogate="mpd_agl", surrogate_options={"width": "mpd"},          # [reference code] kappa from gamma and decay
    loss="ce",                                                        # [reference code] CE on mean logits
    dataset="cifar10", dataset_options={"auto_augment": "cifar10", "cutout": False},
    batch_size=100, epochs=150,                                       # [reference code]
    optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,         # [reference code] wd also on BN gamma, w
    schedule="cosine", seed=2025, output_dir="runs/mpd_agl_cifar10",
)
VANILLA = {"surrogate_options": {"width": "fixed"}}  # [reconstructed] fixed width-1 rectangle (paper's vanilla unknown)
SMOKE = {"model_options": {"bn_scale": 0.5, "width": 0.125}}

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
