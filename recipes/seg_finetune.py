"""Fine-tune a spiking encoder-decoder for semantic segmentation with any method.

    accelerate launch recipes/seg_finetune.py --data_root data                  # VOC2012, spiking FPN
    accelerate launch recipes/seg_finetune.py --pretrained runs/cls/best_model.pt   # encoder from classification
    accelerate launch recipes/seg_finetune.py --model spiking_unet --dataset ade20k
    accelerate launch recipes/seg_finetune.py --surrogate a2sg                      # any neuron / surrogate / loss

``--pretrained`` takes a checkpoint of a ``resnet18`` classification run (ImageNet stem, same width);
its weights are loaded into the encoder (checked by name and shape).  Dice + CE loss and mIoU come from
segmentation-models-pytorch; ``examples.png`` shows predictions overlaid on test images.
Hyperparameters are [reconstructed] (no paper of the four specifies them).
"""
from repro.cli import main
from repro.config import Config

config = Config(
    model="spiking_fpn", num_steps=4,
    neuron="lif", neuron_options={"decay": 0.5}, surrogate="atan",
    loss="dice_ce",
    dataset="voc2012", dataset_options={"crop_size": 512},
    batch_size=8, eval_batch_size=8, epochs=50,
    optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, schedule="cosine", warmup_epochs=1,
    seed=2025, output_dir="runs/seg_finetune",
)
SMOKE = {"model_options": {"width": 0.25, "pyramid_channels": 32, "segmentation_channels": 32}}

if __name__ == "__main__":
    main(config, smoke=SMOKE, description=__doc__)
