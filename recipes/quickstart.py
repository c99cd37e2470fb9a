"""Quickstart: a spiking ResNet-19 (quarter width) on the embedded ``digits`` dataset, CPU-friendly.

    accelerate launch recipes/quickstart.py                 # time and accuracy as measured: README, "Set-up"
    accelerate launch recipes/quickstart.py --smoke         # seconds: the same code path
    accelerate launch recipes/quickstart.py --surrogate triangle --surrogate.width 0.5

Hyperparameters are ours [reconstructed], chosen to train in minutes on a laptop CPU; they are
not any paper's recipe.
"""
from repro.cli import main
from repro.config import Config

config = Config(
    model="resnet19",
    model_options={"width": 0.25},  # 32/64/128 channels instead of 128/256/512
    num_steps=2,
    neuron="lif",                   # snnTorch conventions: strict >, detached zero reset
    neuron_options={"decay": 0.5},
    surrogate="atan",
    surrogate_options={"alpha": 2.0},
    loss="ce",
    dataset="digits",
    batch_size=32,
    eval_batch_size=120,
    epochs=8,
    optimizer="sgd",
    lr=0.05,
    momentum=0.9,
    weight_decay=5e-4,
    schedule="cosine",
    seed=2025,
    output_dir="runs/quickstart",
)

if __name__ == "__main__":
    main(config, description=__doc__)
