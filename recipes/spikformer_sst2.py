"""The directly trained spiking text Transformer on SST-2, T=32: the baseline of SpikeBERT (Lv et al.) and
CPG-PE (Lv et al., NeurIPS 2024), which report roughly 80-82 % [paper, via summary]; docs/methods.md
section "Circulate-firing recipes".

Model (models/spikformer_text.py) and setup of the SpikeBERT reference code: depth 6, dim 768, 8 heads,
max length 64, bert-base-cased tokens, spikingjelly LIF tau = 10, theta = 1 (attention neuron theta / 2),
atan surrogate, batch 12, lr 1e-4, 100 epochs [reference code]; AdamW, weight decay 0.01, the cosine
schedule, BN instead of LayerNorm and the learned position embedding are ours [reconstructed].
The same network is recipes/cf_sst2.py --vanilla; this recipe keeps the baseline on its own for
``--dataset mr|sst5|subj`` and T sweeps.

    accelerate launch recipes/spikformer_sst2.py --download
    accelerate launch recipes/spikformer_sst2.py --num_steps 4 --dataset subj
"""
from repro.cli import main
from repro.config import Config

config = Config(
    model="spikformer_text", num_steps=32, neuron="lif", surrogate="atan", loss="ce",
    dataset="sst2", dataset_options={"tokenizer": "bert-base-cased", "max_length": 64},
    batch_size=12, eval_batch_size=64, epochs=100,
    optimizer="adamw", lr=1e-4, weight_decay=0.01, schedule="cosine",
    seed=2025, output_dir="runs/spikformer_sst2",
)
SMOKE = {"num_steps": 2, "model_options": {"depth": 1, "dim": 32, "heads": 2}}

if __name__ == "__main__":
    main(config, smoke=SMOKE, description=__doc__)
