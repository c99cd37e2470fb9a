"""A2SG for semantic segmentation: spiking FPN (ResNet-18 encoder) on ADE20K, 512x512 crops, T=4, mIoU.

The paper reports ADE20K segmentation [paper, via summary] without its setup or numbers; we follow the
SDT-v2 protocol (ADE20K, Semantic-FPN, 512x512 crops, mIoU) [reconstructed]: the seg_finetune recipe with A2SG.
Start from a classification backbone with ``--pretrained PATH``; ``--vanilla`` is the fixed triangle (TRI).
"""
import dataclasses

from seg_finetune import SMOKE, config as finetune

from repro.cli import main

config = dataclasses.replace(
    finetune, dataset="ade20k", dataset_options={"crop_size": 512},
    surrogate="a2sg", surrogate_options={"shape": "ramp", "adapt": "search", "w0": 0.5},  # [paper, via summary]
    batch_size=16, eval_batch_size=8, epochs=100, output_dir="runs/a2sg_segmentation",
)
VANILLA = {"surrogate_options": {"shape": "triangle", "adapt": "none", "w0": 0.5}}  # the paper's fixed TRI

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
